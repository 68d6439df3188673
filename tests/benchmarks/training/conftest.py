import pytest

from tests import videos


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    return videos.ucf101(tmp_path_factory.mktemp("ucf"))
