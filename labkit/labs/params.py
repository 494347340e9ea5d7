"""Per-student parameters: every value is derived from (course, student, lab, parameter) with HMAC-SHA256 under a
per-course secret.

Deriving instead of storing means re-provisioning gives the same values, and the secret means a student who knows the
scheme (and their own values) still cannot compute a classmate's. Each parameter has its own HMAC stream keyed by its
name, so adding or removing one parameter leaves the others unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from labkit.errors import LabFormatError
from labkit.labs.schema import INT, SCALAR_LIST, STR, ValueType

if TYPE_CHECKING:
    from labkit.labs.model import Lab

#: A secret shorter than this could be guessed by trying values against a student's own parameters.
MIN_SECRET_BYTES = 16
_DOMAIN = b"labkit-params-v1"
_MAX_TRIES = 1000

Problems = list[tuple[str, str]]


class Stream:
    """An endless deterministic byte stream: HMAC-SHA256(secret, label || counter) blocks, read in order."""

    def __init__(self, secret: bytes, label: bytes) -> None:
        self._secret = secret
        self._label = label
        self._counter = 0
        self._buffer = b""

    def read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            block = self._label + self._counter.to_bytes(8, "big")
            self._buffer += hmac.new(self._secret, block, hashlib.sha256).digest()
            self._counter += 1
        out, self._buffer = self._buffer[:count], self._buffer[count:]
        return out

    def below(self, limit: int) -> int:
        """A uniform integer in ``[0, limit)`` (rejection sampling, so no value is more likely than another)."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        size = (limit.bit_length() + 7) // 8 + 8
        span = 1 << (8 * size)
        cutoff = span - span % limit
        while True:
            value = int.from_bytes(self.read(size), "big")
            if value < cutoff:
                return value % limit


class Generator(ABC):
    """One kind of parameter value. ``options`` are its keys in ``[params.<name>]``; ``required`` must be given."""

    kind: str = ""
    options: Mapping[str, ValueType] = MappingProxyType({})
    required: frozenset[str] = frozenset()

    @abstractmethod
    def problems(self, options: Mapping[str, object]) -> Problems:
        """What is wrong with ``options`` (already type-checked), as (option key, message) pairs."""

    @abstractmethod
    def generate(self, options: Mapping[str, object], stream: Stream) -> object:
        """Draw one value from ``stream``."""

    def conflicts(self, value: object, earlier: list[object]) -> bool:
        """True when ``value`` clashes with a value this generator kind drew earlier for the same student."""
        return False


class IntRange(Generator):
    """An integer between ``min`` and ``max`` inclusive (ports, counts, UIDs)."""

    kind = "int"
    options = MappingProxyType({"min": INT, "max": INT})
    required = frozenset({"min", "max"})

    def problems(self, options: Mapping[str, object]) -> Problems:
        low, high = options.get("min"), options.get("max")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            return [("max", f"max {high} is smaller than min {low}")]
        return []

    def generate(self, options: Mapping[str, object], stream: Stream) -> object:
        low, high = int(options["min"]), int(options["max"])  # type: ignore[call-overload]
        return low + stream.below(high - low + 1)


class Choice(Generator):
    """One of the listed ``choices``."""

    kind = "choice"
    options = MappingProxyType({"choices": SCALAR_LIST})
    required = frozenset({"choices"})

    def problems(self, options: Mapping[str, object]) -> Problems:
        choices = options.get("choices")
        if not isinstance(choices, list):
            return []
        if not choices:
            return [("choices", "choices is empty; list at least one value")]
        if len(set(choices)) != len(choices):
            return [("choices", "choices holds the same value twice")]
        return []

    def generate(self, options: Mapping[str, object], stream: Stream) -> object:
        choices = list(options["choices"])  # type: ignore[call-overload]
        return choices[stream.below(len(choices))]


#: Short, common, inoffensive English words: safe as user names, host names and file names.
WORDS = (
    "acorn", "alder", "amber", "anchor", "apple", "arrow", "aspen", "atlas", "badge", "bagel", "baker", "bamboo",
    "banjo", "basil", "beacon", "berry", "birch", "bison", "blaze", "bloom", "brook", "cabin", "cactus", "camel",
    "candle", "canoe", "canyon", "carrot", "cedar", "cherry", "cider", "clover", "cobalt", "comet", "copper", "coral",
    "cotton", "crane", "crystal", "daisy", "delta", "denim", "dingo", "dolphin", "dune", "eagle", "ember", "falcon",
    "fern", "fiddle", "flint", "forest", "fossil", "fox", "galaxy", "garnet", "gecko", "ginger", "glacier", "granite",
    "grove", "harbor", "hazel", "heron", "hickory", "honey", "husky", "iris", "island", "ivory", "jade", "jasper",
    "juniper", "kayak", "kettle", "kiwi", "koala", "lagoon", "lantern", "larch", "lemon", "lilac", "lily", "linen",
    "lotus", "lynx", "magnet", "maple", "marble", "meadow", "melon", "mesa", "meteor", "mint", "mango", "maroon",
    "nectar", "nickel", "noodle", "nutmeg", "oasis", "ocean", "olive", "onyx", "orbit", "orchid", "otter", "oyster",
    "paddle", "panda", "papaya", "parrot", "peach", "pebble", "pelican", "pepper", "pine", "pixel", "planet", "plum",
    "polar", "poppy", "prairie", "puffin", "quartz", "quill", "radar", "raven", "reef", "ridge", "river", "robin",
    "rocket", "saffron", "sage", "salmon", "sapphire", "shell", "sierra", "silver", "sparrow", "spruce", "squid",
    "stone", "summit", "sunset", "swan", "tango", "thistle", "thunder", "tiger", "timber", "topaz", "tulip", "tundra",
    "turtle", "umber", "valley", "velvet", "violet", "walnut", "walrus", "willow", "window", "wombat", "yarrow",
    "yucca", "zebra", "zephyr", "zinc",
)


class Word(Generator):
    """A word from `WORDS`, with ``digits`` random digits appended (0 to 6; more digits, fewer repeats in a class)."""

    kind = "word"
    options = MappingProxyType({"digits": INT})

    def problems(self, options: Mapping[str, object]) -> Problems:
        digits = options.get("digits", 0)
        if isinstance(digits, int) and not 0 <= digits <= 6:
            return [("digits", f"digits {digits} is not between 0 and 6")]
        return []

    def generate(self, options: Mapping[str, object], stream: Stream) -> object:
        digits = int(options.get("digits", 0))  # type: ignore[call-overload]
        word = WORDS[stream.below(len(WORDS))]
        return word + "".join(str(stream.below(10)) for _ in range(digits))


#: letters and digits without the look-alikes 0/O, 1/l/I, so a password copied from a screen works
PASSWORD_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


class Password(Generator):
    """A random password of ``length`` characters (default 12) from `PASSWORD_ALPHABET`."""

    kind = "password"
    options = MappingProxyType({"length": INT})

    def problems(self, options: Mapping[str, object]) -> Problems:
        length = options.get("length", 12)
        if isinstance(length, int) and not 6 <= length <= 128:
            return [("length", f"length {length} is not between 6 and 128")]
        return []

    def generate(self, options: Mapping[str, object], stream: Stream) -> object:
        length = int(options.get("length", 12))  # type: ignore[call-overload]
        return "".join(PASSWORD_ALPHABET[stream.below(len(PASSWORD_ALPHABET))] for _ in range(length))


class HexToken(Generator):
    """``length`` lower-case hex digits (default 16): flags, tokens, secret phrases."""

    kind = "hex"
    options = MappingProxyType({"length": INT})

    def problems(self, options: Mapping[str, object]) -> Problems:
        length = options.get("length", 16)
        if isinstance(length, int) and not 1 <= length <= 256:
            return [("length", f"length {length} is not between 1 and 256")]
        return []

    def generate(self, options: Mapping[str, object], stream: Stream) -> object:
        length = int(options.get("length", 16))  # type: ignore[call-overload]
        return "".join("0123456789abcdef"[stream.below(16)] for _ in range(length))


class Ipv4(Generator):
    """An IPv4 address inside ``subnet`` (never its network or broadcast address), or with ``prefix`` a whole
    sub-network of that size inside ``subnet`` such as ``10.37.112.0/24`` (per-student lab subnets).

    The ipv4 values of one student never overlap each other: a clash is drawn again.
    """

    kind = "ipv4"
    options = MappingProxyType({"subnet": STR, "prefix": INT})
    required = frozenset({"subnet"})

    def problems(self, options: Mapping[str, object]) -> Problems:
        subnet = options.get("subnet")
        if not isinstance(subnet, str):
            return []
        try:
            network = ipaddress.IPv4Network(subnet)
        except ValueError as err:
            return [("subnet", f"subnet {subnet!r} is not an IPv4 network such as 10.0.0.0/8 ({err})")]
        prefix = options.get("prefix")
        if prefix is None:
            if network.prefixlen > 30:
                return [("subnet", f"subnet {subnet} is too small to hold a host address; use /30 or larger")]
            return []
        if isinstance(prefix, int) and not network.prefixlen < prefix <= 30:
            return [("prefix", f"prefix {prefix} must be longer than /{network.prefixlen} and at most 30")]
        return []

    def generate(self, options: Mapping[str, object], stream: Stream) -> object:
        network = ipaddress.IPv4Network(str(options["subnet"]))
        prefix = options.get("prefix")
        if prefix is None:
            host = 1 + stream.below(network.num_addresses - 2)
            return str(network.network_address + host)
        count = 1 << (int(prefix) - network.prefixlen)  # type: ignore[call-overload]
        size = 1 << (32 - int(prefix))  # type: ignore[call-overload]
        start = network.network_address + stream.below(count) * size
        return f"{start}/{prefix}"

    def conflicts(self, value: object, earlier: list[object]) -> bool:
        mine = ipaddress.IPv4Network(str(value), strict=False)
        return any(mine.overlaps(ipaddress.IPv4Network(str(other), strict=False)) for other in earlier)


#: The generator registry: ``kind = "..."`` in ``[params.<name>]`` picks one of these.
GENERATORS: dict[str, Generator] = {
    gen.kind: gen for gen in (IntRange(), Choice(), Word(), Password(), HexToken(), Ipv4())
}


def _secret_bytes(secret: bytes | str) -> bytes:
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise LabFormatError(f"the course secret is {len(key)} bytes long; it must be at least {MIN_SECRET_BYTES}")
    return key


def _label(*parts: str) -> bytes:
    # NUL cannot occur inside names (they are checked), so the joined label is unambiguous.
    return b"\x00".join([_DOMAIN, *(part.encode() for part in parts), b""])


def student_params(lab: Lab, course: str, student: str, secret: bytes | str) -> dict[str, object]:
    """Every parameter of ``lab`` for one student, in declaration order. The same inputs always give the same values."""
    key = _secret_bytes(secret)
    values: dict[str, object] = {}
    drawn: dict[str, list[object]] = {}
    for name, param in lab.params.items():
        generator = GENERATORS[param.kind]
        stream = Stream(key, _label(course, student, lab.id, name))
        earlier = drawn.setdefault(param.kind, [])
        for _ in range(_MAX_TRIES):
            value = generator.generate(param.options, stream)
            if not generator.conflicts(value, earlier):
                break
        else:
            raise LabFormatError(
                f"lab {lab.id}: parameter {name!r} found no {param.kind} value that differs from the earlier ones; "
                "give it a larger range"
            )
        earlier.append(value)
        values[name] = value
    return values
