"""sslseq/config.py's one deep merge and one diff of nested config dicts (model_config under
``model:``, fine-tuning keys over a pretrained encoder, the resume check)."""

from __future__ import annotations

import pytest

from sslseq.config import deep_merge, dict_diff
from sslseq.models import CTCModel, build_model
from sslseq.utils import SslseqError
from test_models import hubert_cfg


def test_deep_merge_merges_dicts_and_replaces_the_rest():
    base = {"a": 1, "enc": {"x": 1, "y": [1, 2], "deep": {"p": 1}}}
    over = {"enc": {"y": [3], "deep": {"q": 2}}, "b": {"new": 1}}
    assert deep_merge(base, over) == {"a": 1, "b": {"new": 1}, "enc": {"x": 1, "y": [3], "deep": {"p": 1, "q": 2}}}
    assert base == {"a": 1, "enc": {"x": 1, "y": [1, 2], "deep": {"p": 1}}}  # inputs untouched
    assert deep_merge({"a": {"x": 1}}, {"a": 5}) == {"a": 5}


def test_dict_diff_names_leaves_with_both_values():
    a = {"lr": 1.0, "conv": [(1, 2)], "enc": {"dim": 4, "drop": 0.1}, "gone": 3}
    b = {"lr": 2.0, "conv": [[1, 2]], "enc": {"dim": 8, "drop": 0.1}}
    assert dict_diff(a, b) == [("enc.dim", 4, 8), ("gone", 3, None), ("lr", 1.0, 2.0)]  # tuples == lists
    assert dict_diff(a, a, "x.") == []


def test_ctc_architecture_change_is_named_through_dict_diff():
    ssl = build_model(hubert_cfg())
    with pytest.raises(SslseqError, match=r"encoder\.encoder\.embed_dim: pretrained 48 vs 64"):
        CTCModel.from_pretrained(ssl, {"vocab_size": 5, "encoder": {"encoder": {"embed_dim": 64}}})
