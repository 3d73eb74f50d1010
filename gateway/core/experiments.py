"""A/B experiments: configuration parsing and sticky, stateless arm assignment (pure).

``VISREC_EXPERIMENT_ARMS`` lists arms as ``name=policy:weight`` separated by commas, e.g.
``control=similarity:50, diverse=mmr(0.7):30, pop=similarity|popularity(0.2):20``. Weights are
percentages and must sum to 100. A user's arm is a pure function of (salt, experiment, user id):
sha256 -> bucket in [0, 10000) -> the arm whose cumulative weight covers the bucket. No storage,
the same answer on every replica and after every restart, and RecordInteraction recomputes it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from visrec.gateway.core.ranking import Policy, PolicyError, parse_policy

BUCKETS = 10_000
DEFAULT_POLICY = "similarity"
_ARM = re.compile(r"^\s*([A-Za-z0-9_\-]{1,64})\s*=\s*(.+?)\s*:\s*([0-9]+(?:\.[0-9]+)?)\s*$")


class ExperimentConfigError(ValueError):
    """Raised with a message naming the environment variable at fault."""


@dataclass(frozen=True)
class Arm:
    name: str
    policy: Policy
    weight: float  # percent
    upper: int  # exclusive upper bucket bound


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    arms: tuple[Arm, ...]

    def bucket(self, user_id: str) -> int:
        digest = hashlib.sha256(f"{self.salt}\x1f{self.name}\x1f{user_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % BUCKETS

    def assign(self, user_id: str) -> Arm:
        b = self.bucket(user_id)
        for arm in self.arms:
            if b < arm.upper:
                return arm
        return self.arms[-1]

    def arm(self, name: str) -> Arm | None:
        return next((a for a in self.arms if a.name == name), None)


def _split_arms(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def parse_experiment(name: str, arms_text: str, salt: str = "",
                     arms_var: str = "VISREC_EXPERIMENT_ARMS",
                     name_var: str = "VISREC_EXPERIMENT") -> Experiment:
    """An experiment from its environment values; errors name the variable."""
    if not arms_text.strip():
        policy = parse_policy(DEFAULT_POLICY)
        return Experiment(name or "none", salt or name or "none",
                          (Arm("default", policy, 100.0, BUCKETS),))
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name or ""):
        raise ExperimentConfigError(
            f"{name_var}={name!r}: an experiment with arms needs a name of 1-64 letters, digits, "
            "'.', '_' or '-'"
        )
    arms: list[Arm] = []
    total = 0.0
    for part in _split_arms(arms_text):
        m = _ARM.match(part)
        if not m:
            raise ExperimentConfigError(
                f"{arms_var}: cannot parse arm {part.strip()!r}; expected name=policy:weight, "
                "e.g. control=similarity:50"
            )
        arm_name, policy_text, weight_text = m.groups()
        if any(a.name == arm_name for a in arms):
            raise ExperimentConfigError(f"{arms_var}: arm {arm_name!r} is defined twice")
        try:
            policy = parse_policy(policy_text)
        except PolicyError as e:
            raise ExperimentConfigError(f"{arms_var}: arm {arm_name!r}: {e}") from None
        weight = float(weight_text)
        if weight <= 0:
            raise ExperimentConfigError(f"{arms_var}: arm {arm_name!r} has weight 0")
        total += weight
        arms.append(Arm(arm_name, policy, weight, round(total * BUCKETS / 100)))
    if abs(total - 100.0) > 1e-9:
        raise ExperimentConfigError(f"{arms_var}: weights sum to {total:g}, not 100")
    return Experiment(name, salt or name, tuple(arms))
