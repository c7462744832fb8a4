"""The KL divergence of a quantized model's outputs from the float model's, computed directly: the ground
truth the refinement's judge (`allocation.judge`) is checked against."""

import torch
import torch.nn.functional as F


def true_kl(model, quantized, batches) -> float:
    """Mean over positions of KL(float || quantized) of the two causal LMs' next-token distributions."""
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            ref = F.log_softmax(model(**b).logits.float(), -1)
            q = F.log_softmax(quantized(**b).logits.float(), -1)
            total += float((ref.exp() * (ref - q)).sum())
            count += ref.shape[0] * ref.shape[1]
    return total / count
