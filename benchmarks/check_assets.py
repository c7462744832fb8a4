"""Load every registry asset once and print the reference figures quoted in assets/loaders.py.

    python -m benchmarks.check_assets                 # everything (~1-2 min on 2 cores)
    python -m benchmarks.check_assets mnist_cnn smollm2

Figures measured on CPU (2 shared cores), torch 2.14.1, torchvision 0.29.1,
transformers 5.24:

    mnist_cnn     MNIST test accuracy 99.05 % (9905/10000)
    mobilenet_v2  18/20 foolbox ImageNet images right (resize 256 + crop 224,
                  and also plain resize 224x224); misses: images 07 and 14
    smollm2       Hamlet perplexity 56.73 (first 16 x 128 tokens of
                  hamlet_gut, no BOS, non-overlapping windows); 43.98 with
                  8 x 256; greedy answer "The capital of France is Paris."
                  fp32 weights dequantized from Q4_1: they carry 4-bit rounding.
    data          MNIST 50k/10k/10k x 784 float32, Fashion-MNIST 60k/10k x 28x28
                  uint8, 42 modern Shakespeare works, 20 images per foolbox set

Exit status 1 when a figure drifts from these values (a changed asset or library).
"""

from __future__ import annotations

import math
import sys
import time

import torch

from benchmarks import assets as A

EXPECTED_MNIST_ACC = 0.9905
EXPECTED_MOBILENET_CORRECT = 18
EXPECTED_HAMLET_PPL = 56.73  # 16 x 128 tokens; see hamlet_perplexity


def mnist_cnn_accuracy(cache_dir=None) -> float:
    """Accuracy of :func:`assets.mnist_cnn` on the 10k MNIST test split."""
    model = A.mnist_cnn(cache_dir)
    _, _, (xte, yte) = A.mnist(cache_dir)
    x = (xte.view(-1, 1, 28, 28) - A.MNIST_MEAN) / A.MNIST_STD
    with torch.no_grad():
        pred = torch.cat([model(b).argmax(1) for b in x.split(2000)])
    return (pred == yte).float().mean().item()


def mobilenet_correct(cache_dir=None, resize: int | tuple = 256, crop: int = 224) -> tuple[int, list[int]]:
    """(number right, indices wrong) of MobileNetV2 on the 20 foolbox ImageNet images."""
    model = A.mobilenet_v2(cache_dir)
    images = A.foolbox_images("imagenet", cache_dir)
    tf = A.imagenet_preprocess(resize, crop)
    x = torch.stack([tf(im.convert("RGB")) for im, _ in images])
    y = torch.tensor([label for _, label in images])
    with torch.no_grad():
        pred = model(x).argmax(1)
    return int((pred == y).sum()), [i for i in range(len(y)) if pred[i] != y[i]]


def hamlet_perplexity(model, tok, n_seq: int = 16, seq_len: int = 128, cache_dir=None) -> float:
    """Perplexity on the first ``n_seq * seq_len`` tokens of Hamlet (modern edition).

    Raw text tokenized without special tokens, cut into non-overlapping
    windows, every token but the first of a window scored.
    """
    text = A.shakespeare_texts(cache_dir)["hamlet"]
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    x = ids[: n_seq * seq_len].view(n_seq, seq_len)
    with torch.no_grad():
        logits = model(x).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
    return math.exp(nll.item())


def smollm2_answer(model, tok, question: str = "What is the capital of France?") -> str:
    msgs = [{"role": "user", "content": question}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
    if not torch.is_tensor(prompt):  # newer tokenizers return a BatchEncoding
        prompt = prompt["input_ids"]
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=20, do_sample=False)
    return tok.decode(out[0, prompt.shape[1] :], skip_special_tokens=True)


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or ["data", "mnist_cnn", "mobilenet_v2", "smollm2"]
    ok = True
    for name in names:
        t = time.time()
        if name == "mnist_cnn":
            acc = mnist_cnn_accuracy()
            good = abs(acc - EXPECTED_MNIST_ACC) < 5e-4
            print(f"mnist_cnn: MNIST test accuracy {acc:.2%} (expected {EXPECTED_MNIST_ACC:.2%})")
        elif name == "mobilenet_v2":
            right, wrong = mobilenet_correct()
            right_224, _ = mobilenet_correct(resize=(224, 224))
            good = right == EXPECTED_MOBILENET_CORRECT
            print(
                f"mobilenet_v2: {right}/20 foolbox ImageNet images right with resize 256 + crop 224 "
                f"(wrong: {wrong}); {right_224}/20 with resize 224x224 (expected {EXPECTED_MOBILENET_CORRECT})"
            )
        elif name == "smollm2":
            model, tok = A.load_smollm2()
            ppl = hamlet_perplexity(model, tok)
            answer = smollm2_answer(model, tok)
            good = abs(ppl - EXPECTED_HAMLET_PPL) < 0.5 and "Paris" in answer
            print(
                f"smollm2: Hamlet perplexity {ppl:.2f} on 16 x 128 tokens (expected {EXPECTED_HAMLET_PPL}; "
                f"fp32 weights dequantized from Q4_1, so they carry 4-bit rounding); "
                f"answer: {answer!r}"
            )
        elif name == "data":
            (xtr, _), (xva, _), (xte, _) = A.mnist()
            fxtr, _, fxte, _ = A.fashion_mnist()
            works = A.shakespeare_texts()
            calib, evaluation = A.text_split()
            counts = {d: len(A.foolbox_images(d)) for d in A.FOOLBOX_DATASETS}
            good = (
                xtr.shape == (50000, 784)
                and xte.shape == (10000, 784)
                and fxtr.shape == (60000, 28, 28)
                and fxte.shape == (10000, 28, 28)
                and len(works) == 42
                and set(counts.values()) == {20}
            )
            print(
                f"data: MNIST {tuple(xtr.shape)}/{tuple(xva.shape)}/{tuple(xte.shape)} {xtr.dtype}; "
                f"Fashion-MNIST {tuple(fxtr.shape)}/{tuple(fxte.shape)} {fxtr.dtype}; "
                f"{len(works)} Shakespeare works, split {len(calib)} calibration / {len(evaluation)} evaluation; "
                f"foolbox {counts}"
            )
        else:
            print(f"unknown check {name!r}; choose from data, mnist_cnn, mobilenet_v2, smollm2", file=sys.stderr)
            return 2
        print(f"  [{'ok' if good else 'DRIFT'}] {time.time() - t:.1f} s")
        ok &= good
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
