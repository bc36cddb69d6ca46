"""CTC decoding, WER scoring and result reports."""
