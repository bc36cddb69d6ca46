"""Self-supervised objectives: Gumbel product quantizer and the wav2vec 2.0 contrastive loss."""

from sslseq.objectives.contrastive import contrastive_loss, sample_negatives
from sslseq.objectives.quantizer import GumbelVectorQuantizer, QuantizerOutput
from sslseq.objectives.codebook import OnlineCodebooks, codeword_perplexity

__all__ = [
    "GumbelVectorQuantizer", "QuantizerOutput", "sample_negatives", "contrastive_loss", "OnlineCodebooks", "codeword_perplexity",
]
