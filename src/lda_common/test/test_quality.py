"""The one quality vocabulary: the service constants, the CLI choices and the training roles agree with it."""

import pytest
from lda_common.schema import QUALITIES, Quality

from lda_msgs.srv import StopEpisode


def test_stop_episode_constants_are_the_vocabulary():
    constants = {name: getattr(StopEpisode.Request, name) for name in dir(StopEpisode.Request)
                 if name.startswith("QUALITY_")}
    assert constants == {f"QUALITY_{q.name}": q.label for q in Quality}


def test_labels_and_ids():
    assert QUALITIES == ("high", "low", "actionless")
    assert [int(q) for q in Quality] == [0, 1, 2]
    assert Quality.parse("Low") is Quality.LOW
    assert Quality.parse(2) is Quality.ACTIONLESS
    assert Quality.parse(Quality.HIGH) is Quality.HIGH


@pytest.mark.parametrize("bad", ["expert", "", 3, -1])
def test_unknown_quality_is_named(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
        Quality.parse(bad)


def test_converter_choices_come_from_the_vocabulary():
    from lda_teleop_record.bag2lerobot import _parser

    action = next(a for a in _parser()._actions if a.dest == "quality")
    assert tuple(action.choices) == QUALITIES
