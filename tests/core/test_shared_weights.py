"""One copy of the embedding and the output head where the HookedTransformer's processed weights equal the
`transformers` model's (core.loading.share_unchanged_weights): shared storage, the same logits; never shared where
processing changed them."""

import torch

from core.loading import DEFAULT_PROCESSING, NO_CENTRING, hooked_transformer_from_hf, load_hf_model, share_unchanged_weights
from factories import build_gpt2_folder, byte_tokenizer

RAW = {key: False for key in DEFAULT_PROCESSING}


def test_unchanged_embedding_and_head_are_shared_and_logits_stay(tmp_path):
    folder = build_gpt2_folder(tmp_path / "m", byte_tokenizer())
    tokens = torch.tensor([[1, 5, 9, 40, 7, 3]])
    for processing, expected in ((RAW, ["W_E", "W_U"]), (NO_CENTRING, ["W_E"]), (DEFAULT_PROCESSING, [])):
        hf, tokenizer = load_hf_model(str(folder))
        model = hooked_transformer_from_hf(hf, tokenizer, processing, "cpu")
        with torch.no_grad():
            before = model(tokens)
            assert share_unchanged_weights(model, hf) == expected
            torch.testing.assert_close(model(tokens), before, rtol=0, atol=0)
        if "W_E" in expected:
            assert model.embed.W_E.data_ptr() == hf.get_input_embeddings().weight.data_ptr()
        if "W_U" in expected:
            assert model.unembed.W_U.data_ptr() == hf.get_output_embeddings().weight.data_ptr()
