"""Calibration: local files / in-memory / streamed datasets -> packed, seeded batches; and every error path."""

import json

import datasets
import pytest
import torch
from PIL import Image

from infoq_hf.calibration import (
    CalibrationSpec,
    calibration_identity,
    describe_batches,
    image_transform_for,
    load_calibration,
)
from tests.helpers.models import tiny_gpt2, tiny_timm, tiny_vit

WORDS = [f"w{i}" for i in range(100)]
EOS = 1


@pytest.fixture(autouse=True)
def offline_datasets(tmp_path, monkeypatch):
    # Arrow caches go to the test's folder, and nothing ever waits on the (unreachable) hub.
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def make_tokenizer(eos=True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "</s>": EOS, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>" if eos else None)


def make_docs(n=40):
    docs = [" ".join(WORDS[(i * 7 + j) % 100] for j in range(3 + i % 5)) for i in range(n)]
    docs[5] = ""  # blank lines, as in wikitext, must be skipped
    docs[11] = "   "
    return docs


def token_stream(docs, eos=True):
    """The documented packing: each non-blank document's ids, then eos."""
    stream = []
    for doc in docs:
        if doc.strip():
            stream += [int(w[1:]) + 2 for w in doc.split()] + ([EOS] if eos else [])
    return stream


def windows(batches):
    return torch.cat([b["input_ids"] for b in batches])


def write_text_files(tmp_path, docs, parts=2):
    files = []
    step = -(-len(docs) // parts)
    for p in range(parts):
        path = tmp_path / f"part{p}.txt"
        path.write_text("\n".join(docs[p * step : (p + 1) * step]) + "\n")
        files.append(str(path))
    return files


# --------------------------------------------------------------------------- spec


def test_spec_roundtrips_through_json_and_rejects_unknown_keys(tmp_path):
    spec = CalibrationSpec("json", data_files={"train": [tmp_path / "a.jsonl"]}, num_samples=4, seq_len=8)
    data = spec.to_dict()
    assert data["data_files"] == {"train": [str(tmp_path / "a.jsonl")]}  # paths became strings
    assert CalibrationSpec.from_dict(json.loads(json.dumps(data))) == spec
    with pytest.raises(ValueError, match=r"unknown calibration option\(s\) \['seqlen'\].*'seq_len'"):
        CalibrationSpec.from_dict({**data, "seqlen": 8})
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        CalibrationSpec("text", num_samples=0)


# --------------------------------------------------------------------------- text


def test_map_style_text_windows_are_contiguous_slices_of_the_seeded_stream(tmp_path):
    docs = make_docs()
    files = write_text_files(tmp_path, docs)
    spec = CalibrationSpec("text", data_files=files, num_samples=10, seq_len=7, batch_size=4, seed=3)
    batches = load_calibration(spec, tokenizer=make_tokenizer())

    assert [b["input_ids"].shape for b in batches] == [(4, 7), (4, 7), (2, 7)]
    for b in batches:
        assert b["input_ids"].dtype == torch.long and set(b) == {"input_ids", "attention_mask"}
        assert torch.equal(b["attention_mask"], torch.ones_like(b["input_ids"]))
    # Document order is dataset.shuffle(seed); windows are the first num_samples cuts of the packed stream.
    order = datasets.load_dataset("text", data_files=files, split="train").shuffle(seed=3)["text"]
    expected = torch.tensor(token_stream(order)[:70]).view(10, 7)
    assert torch.equal(windows(batches), expected)
    assert sorted(order) == sorted(docs)


def test_without_eos_documents_are_simply_concatenated():
    ds = datasets.Dataset.from_dict({"text": make_docs()})
    batches = load_calibration(ds, tokenizer=make_tokenizer(eos=False), num_samples=5, seq_len=6, seed=1)
    expected = token_stream(ds.shuffle(seed=1)["text"], eos=False)[:30]
    assert windows(batches).flatten().tolist() == expected
    assert EOS not in expected


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_local_file_formats_give_the_same_batches_as_in_memory(tmp_path, fmt):
    docs = make_docs()
    in_memory = datasets.Dataset.from_dict({"text": docs, "id": list(range(len(docs)))})
    path = tmp_path / f"docs.{'jsonl' if fmt == 'json' else fmt}"
    getattr(in_memory, f"to_{fmt}")(str(path))
    options = dict(num_samples=6, seq_len=9, batch_size=4, seed=7)
    tok = make_tokenizer()

    from_file = load_calibration({"dataset": fmt, "data_files": str(path), **options}, tokenizer=tok)
    from_memory = load_calibration(in_memory, tokenizer=tok, **options)
    assert len(from_file) == len(from_memory) == 2
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(from_file, from_memory))


def test_streaming_in_order_and_shuffled(tmp_path):
    docs = make_docs()
    files = write_text_files(tmp_path, docs, parts=1)
    tok = make_tokenizer()
    spec = CalibrationSpec("text", data_files=files, streaming=True, num_samples=6, seq_len=5, batch_size=6)

    in_order = load_calibration(spec, tokenizer=tok, shuffle_buffer=0)
    assert windows(in_order).flatten().tolist() == token_stream(docs)[:30]

    shuffled = load_calibration(spec, tokenizer=tok, seed=1)
    again = load_calibration(spec, tokenizer=tok, seed=1)
    other = load_calibration(spec, tokenizer=tok, seed=2)
    assert torch.equal(windows(shuffled), windows(again))
    assert not torch.equal(windows(shuffled), windows(other))
    assert not torch.equal(windows(shuffled), windows(in_order))
    assert windows(shuffled).shape == (6, 5)


def test_iterable_dataset_object_is_accepted():
    ds = datasets.Dataset.from_dict({"text": make_docs()}).to_iterable_dataset()
    batches = load_calibration(ds, tokenizer=make_tokenizer(), num_samples=4, seq_len=5, shuffle_buffer=0)
    assert windows(batches).flatten().tolist() == token_stream(make_docs())[:20]


def test_same_seed_same_batches_different_seed_differs():
    ds = datasets.Dataset.from_dict({"text": make_docs()})
    tok = make_tokenizer()
    a = load_calibration(ds, tokenizer=tok, num_samples=8, seq_len=6, seed=0)
    b = load_calibration(ds, tokenizer=tok, num_samples=8, seq_len=6, seed=0)
    c = load_calibration(ds, tokenizer=tok, num_samples=8, seq_len=6, seed=1)
    assert torch.equal(windows(a), windows(b))
    assert not torch.equal(windows(a), windows(c))


class CountingTokenizer:
    """Wraps a tokenizer and counts how many documents it was asked to tokenise."""

    def __init__(self, tokenizer):
        self.tokenizer, self.documents = tokenizer, 0
        self.eos_token_id = tokenizer.eos_token_id

    def __call__(self, texts, **kwargs):
        self.documents += len(texts)
        return self.tokenizer(texts, **kwargs)


@pytest.mark.parametrize("streaming", [False, True])
def test_reads_only_as_many_documents_as_needed(streaming):
    ds = datasets.Dataset.from_dict({"text": ["w1 w2 w3"] * 5000})  # 4 tokens per document with eos
    if streaming:
        ds = ds.to_iterable_dataset()
    tok = CountingTokenizer(make_tokenizer())
    load_calibration(ds, tokenizer=tok, num_samples=4, seq_len=10, shuffle_buffer=0)
    assert tok.documents <= 64  # 10 documents needed, read in chunks of 64, not all 5000


def test_lm_labels_and_tuple_format():
    ds = datasets.Dataset.from_dict({"text": make_docs()})
    tok = make_tokenizer()
    with_labels = load_calibration(ds, tokenizer=tok, num_samples=3, seq_len=4, lm_labels=True)
    assert torch.equal(with_labels[0]["labels"], with_labels[0]["input_ids"])
    assert with_labels[0]["labels"].data_ptr() != with_labels[0]["input_ids"].data_ptr()  # a copy
    x, y = load_calibration(ds, tokenizer=tok, num_samples=3, seq_len=4, format="tuple")[0]
    assert torch.equal(x, with_labels[0]["input_ids"]) and y is None


def test_tokenizer_from_a_local_transformers_model(tmp_path):
    from transformers import GPT2LMHeadModel

    tiny_gpt2(seed=None, vocab=102, positions=16, hidden=8).save_pretrained(tmp_path / "lm")
    make_tokenizer().save_pretrained(tmp_path / "lm")
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "lm")
    ds = datasets.Dataset.from_dict({"text": make_docs()})
    from_model = load_calibration(ds, model=model, num_samples=2, seq_len=4)
    from_tokenizer = load_calibration(ds, tokenizer=make_tokenizer(), num_samples=2, seq_len=4)
    assert torch.equal(windows(from_model), windows(from_tokenizer))


# --------------------------------------------------------------------------- images

COLORS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "fish": (0, 0, 255)}  # class i is pure channel i


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "images"
    for cls, color in COLORS.items():
        (root / cls).mkdir(parents=True)
        for i in range(4):
            image = Image.new("RGB", (20 + 3 * i, 16 + i), color)
            if i == 3:
                image = image.convert("RGBA")  # odd modes must be converted, not break the transform
            image.save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def timm_resnet():
    # A small input size keeps the transforms and the forward pass quick; the transform must follow it.
    return tiny_timm("resnet18", num_classes=3, seed=None, pretrained_cfg_overlay=dict(input_size=(3, 64, 64)))


def test_imagefolder_dict_and_tuple_formats_with_folder_labels(image_folder, timm_resnet):
    transform = image_transform_for(timm_resnet)
    spec = CalibrationSpec(
        "imagefolder", data_dir=str(image_folder), label_column="label", num_samples=10, batch_size=4
    )

    as_dict = load_calibration(spec, image_transform=transform)
    assert [b["pixel_values"].shape for b in as_dict] == [(4, 3, 64, 64), (4, 3, 64, 64), (2, 3, 64, 64)]
    assert all(b["pixel_values"].dtype == torch.float32 and b["labels"].dtype == torch.long for b in as_dict)
    x = torch.cat([b["pixel_values"] for b in as_dict])
    y = torch.cat([b["labels"] for b in as_dict])
    # Each class is one pure colour, so the brightest channel names the folder the image came from.
    assert torch.equal(x.mean(dim=(2, 3)).argmax(dim=1), y)
    assert len(set(y.tolist())) > 1

    as_tuple = load_calibration(spec, model=timm_resnet, format="tuple")  # transform derived from the model
    assert torch.equal(torch.cat([b[0] for b in as_tuple]), x)
    assert torch.equal(torch.cat([b[1] for b in as_tuple]), y)
    timm_resnet(as_tuple[0][0])  # the batch is the model's input


def test_images_without_label_column_have_no_labels(image_folder, timm_resnet):
    spec = dict(dataset="imagefolder", data_dir=str(image_folder), num_samples=3, batch_size=3)
    (batch,) = load_calibration(spec, image_transform=image_transform_for(timm_resnet))
    assert set(batch) == {"pixel_values"}
    ((x, y),) = load_calibration(spec, model=timm_resnet, format="tuple")
    assert x.shape == (3, 3, 64, 64) and y is None


def test_image_stream_is_seeded(image_folder, timm_resnet):
    spec = CalibrationSpec(
        "imagefolder", data_dir=str(image_folder), streaming=True, label_column="label", num_samples=5, batch_size=5
    )
    a = load_calibration(spec, model=timm_resnet, seed=0)[0]
    b = load_calibration(spec, model=timm_resnet, seed=0)[0]
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["labels"], b["labels"])
    labels = {tuple(load_calibration(spec, model=timm_resnet, seed=s)[0]["labels"].tolist()) for s in range(4)}
    assert len(labels) > 1


def test_image_transform_for_transformers_processor_and_model(tmp_path):
    from transformers import ViTForImageClassification, ViTImageProcessor

    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    image = Image.new("RGB", (50, 40), (10, 200, 30))
    assert image_transform_for(processor)(image).shape == (3, 32, 32)

    tiny_vit(seed=None).save_pretrained(tmp_path / "vit")
    bare = ViTForImageClassification.from_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="no image processor is saved locally"):
        image_transform_for(bare)
    processor.save_pretrained(tmp_path / "vit")
    model = ViTForImageClassification.from_pretrained(tmp_path / "vit")
    x = image_transform_for(model)(image)
    assert torch.allclose(x, image_transform_for(processor)(image))

    ds = datasets.Dataset.from_dict({"image": [image] * 4, "label": [0, 1, 2, 1]})
    (batch,) = load_calibration(ds, model=model, label_column="label", num_samples=4, batch_size=4)
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert model(**batch).loss is not None  # transformers convention: the batch is the model's kwargs

    with pytest.raises(ValueError, match="cannot build an image transform from a Linear"):
        image_transform_for(torch.nn.Linear(2, 2))


# --------------------------------------------------------------------------- errors


def test_wrong_text_column_lists_the_real_columns(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": d, "n": i}) + "\n" for i, d in enumerate(make_docs())))
    for streaming in (False, True):
        with pytest.raises(ValueError, match=r"text_column='text' is not a column.*\['body', 'n'\]"):
            load_calibration(
                CalibrationSpec("json", data_files=str(path), streaming=streaming), tokenizer=make_tokenizer()
            )
    batches = load_calibration(
        CalibrationSpec("json", data_files=str(path), text_column="body", num_samples=2, seq_len=4),
        tokenizer=make_tokenizer(),
    )
    assert windows(batches).shape == (2, 4)


def test_wrong_label_and_image_columns_list_the_real_columns(image_folder, timm_resnet):
    spec = CalibrationSpec("imagefolder", data_dir=str(image_folder), label_column="class")
    with pytest.raises(ValueError, match=r"label_column='class'.*\['image', 'label'\]"):
        load_calibration(spec, model=timm_resnet)
    ds = datasets.Dataset.from_dict({"text": make_docs()})
    with pytest.raises(ValueError, match=r"image_column='image'.*holds text.*\['text'\]"):
        load_calibration(ds, model=timm_resnet)


@pytest.mark.parametrize("streaming", [False, True])
def test_images_for_a_text_model_say_so(image_folder, streaming):
    spec = CalibrationSpec("imagefolder", data_dir=str(image_folder), streaming=streaming)
    with pytest.raises(ValueError, match="this dataset holds images.*pass an image_transform"):
        load_calibration(spec, tokenizer=make_tokenizer())
    with pytest.raises(ValueError, match="this dataset holds images"):
        load_calibration(spec)


def test_text_without_tokenizer():
    ds = datasets.Dataset.from_dict({"text": make_docs()})
    with pytest.raises(ValueError, match="no tokenizer given; pass tokenizer="):
        load_calibration(ds)


@pytest.mark.parametrize("streaming", [False, True])
def test_too_few_samples_warns_uses_what_there_is_and_fails_only_when_none(tmp_path, streaming):
    docs = make_docs()
    files = write_text_files(tmp_path, docs)
    stream = token_stream(docs)
    total = len(stream)
    spec = CalibrationSpec(
        "text", data_files=files, streaming=streaming, num_samples=1000, seq_len=16, shuffle_buffer=0
    )
    with pytest.warns(
        UserWarning,
        match=rf"yielded only {total // 16} window\(s\) .*\({total} tokens from 38 "
        rf"documents\).*Set num_samples={total // 16}",
    ):
        batches = load_calibration(spec, tokenizer=make_tokenizer())
    assert sum(b["input_ids"].shape[0] for b in batches) == total // 16
    with pytest.raises(ValueError, match=rf"set seq_len to at most {total}"):
        load_calibration(spec, tokenizer=make_tokenizer(), seq_len=total + 1)


def test_too_few_images_warns_and_uses_them(image_folder, timm_resnet):
    spec = CalibrationSpec("imagefolder", data_dir=str(image_folder), streaming=True, num_samples=20)
    with pytest.warns(UserWarning, match=r"yielded only 12 usable image\(s\).*num_samples=12"):
        batches = load_calibration(spec, model=timm_resnet)
    assert sum(b["pixel_values"].shape[0] for b in batches) == 12


def test_ready_batches_pass_through_and_empty_is_an_error():
    batches = [{"input_ids": torch.ones(2, 3, dtype=torch.long)}]
    assert load_calibration(batches) is batches
    assert load_calibration(iter(batches)) == batches
    with pytest.raises(ValueError, match="yielded no batches"):
        load_calibration([])
    with pytest.raises(ValueError, match="yielded no batches"):
        load_calibration(x for x in [])
    with pytest.raises(ValueError, match="single batch"):
        load_calibration(batches[0])


def test_unreachable_hub_points_at_local_files():
    with pytest.raises(
        ValueError,
        match=r'hub is unreachable.*dataset="text"/"json"/"csv"/"parquet"/"imagefolder" '
        r"and data_files=",
    ):
        load_calibration(CalibrationSpec("wikitext", config="wikitext-2-raw-v1"), tokenizer=make_tokenizer())


def test_dataset_dict_asks_for_a_split():
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["w1"]})})
    with pytest.raises(ValueError, match=r"pass one split, e.g. dataset\['train'\]"):
        load_calibration(dd, tokenizer=make_tokenizer())


# --------------------------------------------------------------------------- identity and logging


def test_calibration_identity(tmp_path):
    files = write_text_files(tmp_path, make_docs())
    spec = CalibrationSpec("text", data_files=files, num_samples=4, seq_len=6, batch_size=3, seed=5)
    tok = make_tokenizer()
    a = calibration_identity(load_calibration(spec, tokenizer=tok))
    b = calibration_identity(load_calibration(spec, tokenizer=tok))
    c = calibration_identity(load_calibration(spec, tokenizer=tok, seed=6))
    assert json.loads(json.dumps(a)) == a
    assert a == b and a["sha256"] != c["sha256"] and len(a["sha256"]) == 64
    assert a["dataset"] == "text" and a["data_files"] == files and a["split"] == "train"
    assert (a["num_samples"], a["seq_len"], a["seed"]) == (4, 6, 5)

    request = calibration_identity(spec)
    assert request["sha256"] is None and request["num_samples"] == 4
    plain = calibration_identity([(torch.zeros(2, 3), torch.tensor([0, 1]))])
    assert plain["num_samples"] == 2 and plain["dataset"] is None and plain["sha256"]
    assert plain["sha256"] != calibration_identity([(torch.zeros(2, 3), torch.tensor([0, 2]))])["sha256"]


def test_describe_batches():
    ds = datasets.Dataset.from_dict({"text": make_docs()})
    batches = load_calibration(ds, tokenizer=make_tokenizer(), num_samples=10, seq_len=6, batch_size=4)
    assert describe_batches(batches) == (
        "calibration: 10 samples in 3 batches (last batch 2); input_ids int64[4, 6], attention_mask int64[4, 6]"
    )
    assert describe_batches([(torch.zeros(2, 3, 8, 8), None)]) == (
        "calibration: 2 samples in 1 batches; x float32[2, 3, 8, 8], y None"
    )
