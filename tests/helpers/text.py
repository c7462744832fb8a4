"""A word-level tokenizer over a fixed word list: text calibration without a downloaded tokenizer."""


def word_tokenizer(words: list[str]):
    """A fast tokenizer whose vocabulary is "[UNK]", "</s>" and `words` (ids 0, 1, 2...), split on spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>")
