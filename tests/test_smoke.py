import chimneyd


def test_version() -> None:
    assert chimneyd.__version__
