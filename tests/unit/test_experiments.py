import pytest

from visrec.gateway.config import ConfigError, GatewayConfig
from visrec.gateway.core.experiments import ExperimentConfigError, parse_experiment

ARMS = "control=similarity:50, diverse=mmr(0.7):30, pop=similarity|popularity(0.2):20"


def test_parses_arms_with_policies_and_weights():
    exp = parse_experiment("ranking-v1", ARMS)
    assert [(a.name, a.policy.name, a.weight) for a in exp.arms] == [
        ("control", "similarity", 50), ("diverse", "mmr(0.7)", 30),
        ("pop", "similarity|popularity(0.2)", 20)]


def test_split_over_ten_thousand_users_is_within_two_points_of_the_weights():
    exp = parse_experiment("ranking-v1", ARMS)
    counts = {a.name: 0 for a in exp.arms}
    for i in range(10_000):
        counts[exp.assign(f"user-{i}").name] += 1
    for arm in exp.arms:
        assert abs(counts[arm.name] / 100 - arm.weight) <= 2.0, counts


def test_assignment_is_sticky_and_depends_on_the_salt():
    a = parse_experiment("exp", ARMS)
    b = parse_experiment("exp", ARMS)
    salted = parse_experiment("exp", ARMS, salt="other")
    users = [f"u{i}" for i in range(500)]
    assert [a.assign(u).name for u in users] == [b.assign(u).name for u in users]
    assert [a.assign(u).name for u in users] != [salted.assign(u).name for u in users]


def test_no_arms_means_one_default_arm():
    exp = parse_experiment("", "")
    assert exp.assign("anyone").name == "default" and exp.arms[0].policy.name == "similarity"


@pytest.mark.parametrize("arms, message", [
    ("control=similarity:50, b=mmr(0.7):40", "sum to 90"),
    ("control=similarity:50, control=mmr(0.7):50", "defined twice"),
    ("control=magic(1):100", "unknown policy step 'magic'"),
    ("control=mmr(7):100", "within \\[0, 1\\]"),
    ("control similarity 100", "expected name=policy:weight"),
    ("a=similarity:0, b=similarity:100", "weight 0"),
])
def test_bad_arms_fail_naming_the_variable(arms, message):
    with pytest.raises(ExperimentConfigError, match="VISREC_EXPERIMENT_ARMS") as err:
        parse_experiment("exp", arms)
    assert err.match(message)


def test_gateway_config_validates_experiment_and_weights_at_start_up():
    with pytest.raises(ConfigError, match="VISREC_EXPERIMENT_ARMS: weights sum to 80"):
        GatewayConfig.from_env({"VISREC_EXPERIMENT": "e",
                                "VISREC_EXPERIMENT_ARMS": "a=mmr(0.5):80"})
    with pytest.raises(ConfigError, match="VISREC_EXPERIMENT="):
        GatewayConfig.from_env({"VISREC_EXPERIMENT_ARMS": "a=similarity:100"})
    with pytest.raises(ConfigError, match="VISREC_INTERACTION_WEIGHTS: no weight for purchase"):
        GatewayConfig.from_env({"VISREC_INTERACTION_WEIGHTS": "view=1,click=1,add_to_cart=1"})
    with pytest.raises(ConfigError, match="VISREC_EXPERIMENT_OVERRIDE='maybe'"):
        GatewayConfig.from_env({"VISREC_EXPERIMENT_OVERRIDE": "maybe"})
    ok = GatewayConfig.from_env({"VISREC_EXPERIMENT": "e", "VISREC_EXPERIMENT_ARMS": ARMS,
                                 "VISREC_EXPERIMENT_OVERRIDE": "true"})
    assert ok.experiment_override and len(ok.experiment_config().arms) == 3
