"""Self-supervised objectives: Gumbel product quantizer and the wav2vec 2.0 contrastive loss."""

from sslseq.objectives.contrastive import contrastive_logits, contrastive_loss, negative_dot, sample_negatives
from sslseq.objectives.quantizer import GumbelVectorQuantizer, QuantizerOutput
from sslseq.objectives.codebook import OnlineCodebooks, codeword_perplexity

__all__ = [
    "GumbelVectorQuantizer", "QuantizerOutput", "sample_negatives", "negative_dot", "contrastive_logits",
    "contrastive_loss", "OnlineCodebooks", "codeword_perplexity",
]
