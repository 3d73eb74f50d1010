import pytest

from visrec.gateway.config import ConfigError, GatewayConfig


def test_defaults_are_valid():
    c = GatewayConfig.from_env({})
    assert c.grpc_address == "[::]:50051" and c.max_k == 1000


def test_reads_prefixed_variables_with_types():
    c = GatewayConfig.from_env({"VISREC_MAX_K": "50", "VISREC_TRITON_TIMEOUT_S": "2.5",
                                "VISREC_MILVUS_URI": "http://milvus:19530", "OTHER": "x"})
    assert (c.max_k, c.triton_timeout_s, c.milvus_uri) == (50, 2.5, "http://milvus:19530")


@pytest.mark.parametrize("env, message", [
    ({"VISREC_MAX_K": "ten"}, "VISREC_MAX_K='ten': expected an integer"),
    ({"VISREC_MAX_K": "0"}, "VISREC_MAX_K must be > 0"),
    ({"VISREC_TRITON_TIMEOUT_S": "soon"}, "VISREC_TRITON_TIMEOUT_S='soon': expected a number"),
    ({"VISREC_METRICS_PORT": "70000"}, "VISREC_METRICS_PORT"),
    ({"VISREC_LOG_FORMAT": "xml"}, "VISREC_LOG_FORMAT"),
    ({"VISREC_MILVUS_URI": " "}, "VISREC_MILVUS_URI must not be empty"),
    ({"VISREC_MAX_IMAGE_BYTES": "99999999"}, "must not exceed VISREC_MAX_MESSAGE_BYTES"),
])
def test_bad_values_fail_naming_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        GatewayConfig.from_env(env)


def test_the_core_is_built_from_the_settings_not_from_copies():
    c = GatewayConfig.from_env({"VISREC_MAX_K": "50", "VISREC_MILVUS_TIMEOUT_S": "1.5",
                                "VISREC_MAX_BATCH_ITEMS": "7", "VISREC_RECENT_QUERIES": "3",
                                "VISREC_PROFILE_RATE": "0.5", "VISREC_EXPERIMENT_OVERRIDE": "1"})
    limits, p = c.limits(), c.personalisation()
    assert (limits.max_k, limits.store_budget_s, limits.max_batch_items) == (50, 1.5, 7)
    assert (p.recent_queries, p.profile_rate, p.allow_arm_override) == (3, 0.5, True)


def test_every_setting_says_what_it_means():
    from visrec.export.config import JobsConfig
    from visrec.platform.settings import describe

    for cls in (GatewayConfig, JobsConfig):
        for name, _, text in describe(cls):
            assert text, f"{name} has no help text"


def test_the_configuration_document_is_what_the_declarations_say():
    """docs/configuration.md is rendered from the settings: a setting added, renamed or given
    another default without re-rendering it fails here."""
    from scripts.config_docs import DOC, render

    assert DOC.read_text() == render(), "run: python scripts/config_docs.py"
