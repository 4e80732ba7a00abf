"""On a GPU the fine-tuning micro-batch is chosen to fit its memory (faked here on a CPU)."""

import pytest

from cifar10_transfer import config, hardware

GIB = 2**30


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.setattr(hardware, "has_accelerator", lambda: True)


@pytest.mark.parametrize(("memory_gb", "steps"), [(16, 2), (80, 1)])
def test_papers_batch_of_256_is_split_to_fit_a_t4_not_an_80_gb_gpu(gpu, memory_gb, steps, capsys):
    paper = config.profile("paper")  # ResNet-50 at 224 px, batch 256, every layer training
    fitted = hardware.fit_micro_batch(paper, memory_bytes=memory_gb * 10**9)
    assert fitted.gradient_accumulation_steps == steps and fitted.batch_size == 256
    model = hardware.step_memory_model("resnet50")
    micro_batch = fitted.batch_size // steps
    needed = model["fixed"] + model["per_image"] * micro_batch
    assert needed <= hardware.MEMORY_HEADROOM * memory_gb * 10**9
    printed = capsys.readouterr().out
    assert (f"gradient_accumulation_steps={steps}" in printed) == (steps > 1)


def test_the_estimate_scales_with_the_pixels_and_a_profile_keeps_its_own_steps(gpu):
    small = config.profile("paper", image_size=112)  # a quarter of the activations
    assert hardware.fit_micro_batch(small, memory_bytes=16 * 10**9).gradient_accumulation_steps == 1
    own = config.profile("paper", gradient_accumulation_steps=8)
    assert hardware.fit_micro_batch(own, memory_bytes=16 * 10**9) is own


def test_nothing_changes_on_a_cpu_or_without_an_estimate(monkeypatch):
    monkeypatch.setattr(hardware, "has_accelerator", lambda: False)
    paper = config.profile("paper")
    assert hardware.fit_micro_batch(paper, memory_bytes=GIB) is paper
    monkeypatch.setattr(hardware, "has_accelerator", lambda: True)
    unknown = config.profile("paper", backbone="mobilenet_v2")
    assert hardware.fit_micro_batch(unknown, memory_bytes=GIB) is unknown
