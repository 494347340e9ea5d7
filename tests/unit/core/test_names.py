"""User-given names become paths, umids and hostnames; anything unsafe is refused with one clear sentence."""

import pytest

from labkit.errors import BadNameError
from labkit.names import MAX_NAME, check_name


@pytest.mark.parametrize("name", ["a", "web-1", "m0", "a" * MAX_NAME])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "is empty"),
        ("a/b", "no '/'"),
        ("..", "no '/', '..'"),
        ("has space", "spaces"),
        ("Upper", "upper case"),
        ("naïve", "unicode"),
        ("-lead", "inner hyphens"),
        ("trail-", "inner hyphens"),
        ("a" * (MAX_NAME + 1), "the limit is"),
    ],
)
def test_bad_names(name: str, says: str) -> None:
    with pytest.raises(BadNameError, match="machine name") as err:
        check_name(name, "machine name")
    assert says in str(err.value)
