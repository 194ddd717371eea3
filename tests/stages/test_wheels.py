"""The wheels stage's platform tags: a device takes its own manylinux tag and every older one."""

import pytest

from edgepipe.stages.wheels import platform_tags


@pytest.mark.parametrize(
    ("tag", "first", "last", "count"),
    [
        ("manylinux_2_28_aarch64", "manylinux_2_28_aarch64", "manylinux2014_aarch64", 13),
        ("manylinux_2_17_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", 2),
    ],
)
def test_manylinux_tags_reach_back_to_manylinux2014(tag, first, last, count):
    tags = platform_tags(tag)
    assert (tags[0], tags[-1], len(tags)) == (first, last, count)


def test_onnxruntimes_2_27_aarch64_wheel_is_accepted_on_a_2_28_device():
    assert "manylinux_2_27_aarch64" in platform_tags("manylinux_2_28_aarch64")


def test_other_tags_pass_through():
    assert platform_tags("macosx_14_0_arm64") == ["macosx_14_0_arm64"]
    assert platform_tags("win_amd64") == ["win_amd64"]
