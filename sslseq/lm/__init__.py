"""Word n-gram language models for CTC decoding: LM text without the evaluation sentences
(``corpus``), the LM dir (ARPA + lexicon, ``ngram``)."""
