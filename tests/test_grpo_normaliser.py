"""step_normaliser, the one place that says what divides a GRPO step's loss: the table of its
module docstring, counts of the whole batch (and only its live groups under
exclude_zero_std_from_normalizer), and a Normaliser that the kernel could not apply is refused.
(That the trainer's gradients follow it is tested in test_grpo_trainer.py, across ranks in
test_distributed.py.)"""

import pytest
import torch

from r1core.trainers.grpo_config import LOSS_TYPES
from r1core.trainers.grpo_normaliser import Normaliser, step_normaliser


def _batch():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)  # 3 + 1 + 4 + 2 tokens
    group_ok = torch.tensor([True, True, False, False])  # the second group dead
    return mask, group_ok


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("exclude", [False, True])
def test_the_table(loss_type, exclude):
    got = step_normaliser(loss_type, exclude, *_batch())
    want = {
        ("dapo", False): Normaliser("dapo", num_items=10.0), ("dapo", True): Normaliser("dapo", num_items=4.0),
        ("cispo", False): Normaliser("cispo", num_items=10.0), ("cispo", True): Normaliser("cispo", num_items=4.0),
        ("bnpo", False): Normaliser("bnpo"), ("bnpo", True): Normaliser("dapo", num_items=4.0),
        ("grpo", False): Normaliser("grpo"), ("grpo", True): Normaliser("grpo", num_seqs=2.0),
        ("sapo", False): Normaliser("sapo"), ("sapo", True): Normaliser("sapo", num_seqs=2.0),
        ("dr_grpo", False): Normaliser("dr_grpo"), ("dr_grpo", True): Normaliser("dr_grpo", num_seqs=2.0),
    }[loss_type, exclude]
    assert got == want
    assert got.step_wide == (loss_type in ("dapo", "cispo") or exclude)


def test_counts_are_at_least_one_and_rescale_uses_the_step_count():
    mask, _ = _batch()
    dead = torch.zeros(4, dtype=torch.bool)
    assert step_normaliser("dapo", True, mask, dead).num_items == 1.0  # no live token: 0 / 1, not 0 / 0
    assert step_normaliser("grpo", True, mask, dead).num_seqs == 1.0
    norm = Normaliser("grpo", num_seqs=8.0)
    assert norm.rescale(torch.tensor(3.0), micro_batch_size=2).item() == pytest.approx(0.75)  # a mean over 2, now over 8
    assert Normaliser("dapo", num_items=5.0).rescale(torch.tensor(3.0), 2).item() == 3.0  # the kernel divided already


def test_a_normaliser_the_kernel_cannot_apply_is_refused():
    with pytest.raises(ValueError, match="num_items applies to loss_type dapo and cispo, not 'bnpo'"):
        Normaliser("bnpo", num_items=3.0)
    with pytest.raises(ValueError, match="num_seqs applies to loss_type grpo, sapo, dr_grpo, not 'dapo'"):
        Normaliser("dapo", num_seqs=3.0)
