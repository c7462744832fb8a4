"""What the tests share: tiny-model builders, the loopback Hub, the old GPTQ reference, distributed jobs."""
