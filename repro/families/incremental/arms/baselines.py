"""The baselines every class-incremental chapter shares, registered as arms with the family's
:class:`~repro.families.incremental.learners.IncrementalConfig`:

* ``finetune``: new data only, CE over the classes seen so far (the lower bound);
* ``replay``: new data plus the exemplar memory;
* ``replay_kd``: replay + distillation of the old classes' logits from the frozen previous model
  (``CE + kd_weight·KD_T``, as iCaRL/WA's base learner);
* ``joint``: all training data of the tasks seen so far (no forgetting pressure: the upper bound).
"""
from __future__ import annotations

import torch

from ....arms import arm
from ....losses.incremental import kd_old_classes, masked_ce
from ..learners import IncrementalConfig, Learner

FAMILY = "incremental"


@arm("finetune", family=FAMILY, config=IncrementalConfig)
class FineTune(Learner):
    """Fine-tuning: each task's own data, CE over the seen classes."""

    name = "finetune"


@arm("replay", family=FAMILY, config=IncrementalConfig)
class Replay(Learner):
    """New data plus the exemplar memory, CE over the seen classes."""

    name = "replay"
    uses_memory = True


@arm("replay_kd", family=FAMILY, config=IncrementalConfig)
class ReplayKD(Replay):
    """Replay + distillation of the old classes' logits from the frozen previous model."""

    name = "replay_kd"
    uses_old_model = True

    def loss_fn(self, t: int, seen: int, seen_before: int):
        old_model, T, w = self.old_model, self.cfg.kd_temperature, self.cfg.kd_weight

        def fn(model, x, y):
            logits = model(x)
            loss = masked_ce(logits, y, seen)
            if old_model is not None and seen_before > 0:
                with torch.no_grad():
                    old = old_model(x)
                loss = loss + w * kd_old_classes(logits, old, seen_before, T)
            return loss, logits[:, :seen]
        return fn


@arm("joint", family=FAMILY, config=IncrementalConfig)
class Joint(Learner):
    """All training data of the tasks seen so far (no forgetting pressure): the upper bound."""

    name = "joint"
    sees_all_data = True


BASELINES: dict[str, type[Learner]] = {"finetune": FineTune, "replay": Replay, "replay_kd": ReplayKD,
                                       "joint": Joint}
