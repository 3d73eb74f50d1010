import numpy as np
import pytest

from visrec.gateway.core.profiles import (
    RECENT_EVENTS,
    WeightsError,
    apply_interaction,
    event_key,
    parse_weights,
)


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_first_interaction_starts_the_profile_at_the_item():
    p = apply_interaction(None, "u", "a", unit(1, 0), "click", 1.0, rate=0.3, now=5.0, key="k1")
    assert np.allclose(p.vector, unit(1, 0)) and p.recent_items == ("a",)
    assert p.counts == {"click": 1} and p.recent_events == ("k1",) and p.updated_at == 5.0


def test_heavier_interactions_move_the_profile_further():
    start = apply_interaction(None, "u", "a", unit(1, 0), "click", 1.0, rate=0.3, now=0, key=None)
    click = apply_interaction(start, "u", "b", unit(0, 1), "click", 1.0, rate=0.3, now=1, key=None)
    buy = apply_interaction(start, "u", "b", unit(0, 1), "purchase", 4.0, rate=0.3, now=1,
                            key=None)
    angle = lambda v: np.arctan2(v[1], v[0])  # noqa: E731
    assert angle(click.vector) < angle(buy.vector) < np.pi / 2
    # Four clicks in a row land exactly where one purchase of weight 4 lands.
    four = start
    for _ in range(4):
        four = apply_interaction(four, "u", "b", unit(0, 1), "click", 1.0, rate=0.3, now=1,
                                 key=None)
    assert np.allclose(four.vector, buy.vector, atol=1e-5)


def test_recent_items_are_unique_most_recent_first_and_bounded():
    p = None
    for i in [1, 2, 3, 2]:
        p = apply_interaction(p, "u", f"i{i}", unit(1, i), "view", 0.1, rate=0.3, now=i,
                              key=None, recent_items=2)
    assert p.recent_items == ("i2", "i3") and p.interactions == 4


def test_event_keys_bound_and_identify_retries():
    assert event_key("u", "", "a", "click") is None
    assert event_key("u", "r1", "a", "click") == event_key("u", "r1", "a", "click")
    assert event_key("u", "r1", "a", "click") != event_key("u", "r1", "a", "view")
    p = None
    for i in range(RECENT_EVENTS + 10):
        p = apply_interaction(p, "u", "a", unit(1, 0), "view", 0.1, rate=0.3, now=i,
                              key=f"k{i}")
    assert len(p.recent_events) == RECENT_EVENTS and p.recent_events[0] == f"k{RECENT_EVENTS + 9}"


@pytest.mark.parametrize("text, message", [
    ("view=1,click=1,add_to_cart=1", "no weight for purchase"),
    ("view=1,click=1,add_to_cart=1,purchase=1,like=2", "unknown interaction type 'like'"),
    ("view=-1,click=1,add_to_cart=1,purchase=1", "cannot parse"),
    ("view=1000,click=1,add_to_cart=1,purchase=1", "within \\[0, 100\\]"),
])
def test_bad_weights(text, message):
    with pytest.raises(WeightsError, match=message):
        parse_weights(text)
