"""Synthetic listening data in exactly the Last.fm 360K play-file format.

``generate`` writes ``user-sha1 <TAB> artist-mbid <TAB> artist-name <TAB> plays`` lines, no header,
grouped by user (users in sha1 order, each user's artists by plays, most played first), like
``usersha1-artmbid-artname-plays.tsv``. The same arguments always give the same bytes.

The structure is the one a recommender is meant to find:

- latent taste communities: every artist belongs to one genre (genre sizes skewed); every user has
  a main and a second genre and draws most artists from them, the rest from global popularity;
- power-law artist popularity (Zipf-Mandelbrot weights over a random rank) and listener activity
  (log-normal artists per user), so a few artists have many listeners and most have few;
- heavy-tailed play counts (log-normal per pair x per-user scale), higher inside a user's genres;
- readable, unique artist names (unique also after the 360K key normalisation), and a share of
  artists without a MusicBrainz id, which parsers must key by name.

Everything is vectorised NumPy / pyarrow; the 17.5 M-row 360K shape writes in about a minute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from pydantic import Field

from tasks.contracts import StageConfig
from tasks.errors import RecsError
from tasks.files import atomic_path


class SyntheticConfig(StageConfig):
    """Size of the generated dataset (written in the Last.fm 360K file format)."""

    users: int = Field(2_000, ge=10, le=360_000)
    artists: int = Field(5_000, ge=10, le=300_000)
    rows: int = Field(100_000, ge=10, le=17_600_000)
    genres: int = Field(40, ge=1)
    seed: int = 0


# Bump when the output for the same arguments changes, so cached files are regenerated.
GENERATOR_VERSION = 1
EMPTY_MBID_SHARE = 0.08
MAIN_GENRE, SECOND_GENRE = 0.65, 0.20  # of a user's draws; the rest follow global popularity
ZIPF_EXPONENT, ZIPF_OFFSET = 1.0, 30.0  # artist popularity ~ (rank + offset) ** -exponent
ACTIVITY_SIGMA = 0.9  # log-normal spread of artists per user
PLAYS_MEDIAN, PLAYS_SIGMA, USER_SCALE_SIGMA, IN_GENRE_BOOST = 40.0, 1.1, 0.6, 2.0
WRITE_BATCH = 1 << 20

ADJECTIVES = (
    "Silent",
    "Electric",
    "Broken",
    "Golden",
    "Velvet",
    "Crimson",
    "Hollow",
    "Wild",
    "Frozen",
    "Neon",
    "Lonely",
    "Burning",
    "Distant",
    "Gentle",
    "Savage",
    "Midnight",
    "Paper",
    "Iron",
    "Glass",
    "Lucky",
    "Restless",
    "Secret",
    "Sleeping",
    "Wandering",
    "Bitter",
    "Hidden",
    "Royal",
    "Cosmic",
    "Dusty",
    "Northern",
    "Southern",
    "Wicked",
    "Tender",
    "Radiant",
    "Pale",
    "Faded",
    "Bright",
    "Shallow",
    "Heavy",
    "Sacred",
    "Sonic",
    "Liquid",
    "Stolen",
    "Twisted",
    "Quiet",
    "Scarlet",
    "Amber",
    "Drifting",
    "Fallen",
    "Rising",
    "Static",
    "Hazy",
    "Sunken",
    "Painted",
    "Crystal",
    "Black",
    "White",
    "Blue",
    "Emerald",
    "Solar",
)
NOUNS = (
    "Wolf",
    "River",
    "Echo",
    "Engine",
    "Mirror",
    "Ghost",
    "Harbor",
    "Comet",
    "Lantern",
    "Tiger",
    "Machine",
    "Garden",
    "Signal",
    "Shadow",
    "Horizon",
    "Canyon",
    "Satellite",
    "Parade",
    "Raven",
    "Desert",
    "Thunder",
    "Fountain",
    "Orchid",
    "Pilot",
    "Voyager",
    "Monarch",
    "Prophet",
    "Dancer",
    "Stranger",
    "Sailor",
    "Saint",
    "Rebel",
    "Dreamer",
    "Hunter",
    "Mountain",
    "Island",
    "Forest",
    "Ocean",
    "Planet",
    "Rocket",
    "Crown",
    "Circus",
    "Temple",
    "Bridge",
    "Tower",
    "Falcon",
    "Serpent",
    "Lion",
    "Phantom",
    "Wave",
    "Cloud",
    "Storm",
    "Flame",
    "Star",
    "Moon",
    "Heart",
    "Feather",
    "Anchor",
    "Arrow",
    "Bell",
)
GIVEN_NAMES = (
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Elena",
    "Felix",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Karin",
    "Leo",
    "Mara",
    "Nils",
    "Olga",
    "Pablo",
    "Rosa",
    "Sven",
    "Tilda",
    "Umar",
    "Vera",
    "Walter",
    "Yara",
    "Zoe",
    "Amir",
    "Bianca",
    "Carlos",
    "Dora",
    "Emil",
    "Frida",
    "Gustav",
    "Hanna",
    "Igor",
    "Julia",
    "Kofi",
    "Lena",
    "Milo",
    "Nora",
    "Oscar",
    "Paula",
    "Quinn",
    "Rafael",
    "Sofia",
    "Theo",
    "Ulla",
    "Victor",
    "Wanda",
    "Xavier",
    "Yusuf",
    "Zelda",
    "Aiko",
    "Boris",
    "Celine",
    "Dmitri",
    "Esther",
    "Farah",
    "Gideon",
    "Helga",
    "Ivan",
    "Jasmin",
)
# Pseudo-words are consonant-vowel syllables, so every syllable sequence spells a different word
# (the few consonants left out made too many unfortunate words).
ONSETS = ("b", "d", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
VOWELS = ("a", "e", "i", "o", "u")


def generate(
    path: Path,
    users: int = 2_000,
    artists: int = 5_000,
    rows: int = 100_000,
    genres: int = 40,
    seed: int = 0,
) -> Path:
    """Write a 360K-format play file of exactly ``rows`` distinct (user, artist) pairs to ``path``.

    Every user has at least one artist; ``rows`` must lie between ``users`` and a quarter of
    ``users x artists`` (beyond that the data would be dense, unlike any listening log). Written
    to a temporary name and renamed, so ``path`` is either complete or absent. Returns ``path``.
    """
    if not 1 <= users <= rows <= users * artists // 4 or genres < 1:
        raise RecsError(
            f"synthetic size users={users:,}, artists={artists:,}, rows={rows:,}, genres={genres} is "
            "impossible: need 1 <= users <= rows <= users x artists / 4 and genres >= 1"
        )
    rng = np.random.default_rng(seed)
    genres = min(genres, artists)
    genre_share = _zipf(genres, 0.6)
    artist_genre = np.sort(np.concatenate([np.arange(genres), rng.choice(genres, artists - genres, p=genre_share)]))
    cumulative = np.cumsum(_zipf_weights(rng.permutation(artists), ZIPF_OFFSET, ZIPF_EXPONENT))
    starts = np.searchsorted(artist_genre, np.arange(genres))
    genre_lo = np.where(starts > 0, cumulative[np.maximum(starts - 1, 0)], 0.0)
    genre_hi = np.append(genre_lo[1:], cumulative[-1])
    taste = rng.choice(genres, size=(users, 2), p=genre_share)
    targets = _targets(rng, users, rows, max(1, artists // 2))

    def draw(owner: np.ndarray, round_: int) -> np.ndarray:
        """One artist per entry of ``owner`` (user codes): taste-led early, uniform at the end."""
        if round_ >= 5:  # a few users exhaust their genres; uniform draws always finish
            return rng.integers(0, artists, size=len(owner))
        pick = rng.random(len(owner))
        genre = np.where(pick < MAIN_GENRE, taste[owner, 0], taste[owner, 1])
        in_taste = (pick < MAIN_GENRE + SECOND_GENRE) & (round_ < 3)
        lo = np.where(in_taste, genre_lo[genre], 0.0)
        hi = np.where(in_taste, genre_hi[genre], cumulative[-1])
        point = lo + rng.random(len(owner)) * (hi - lo)
        return np.minimum(np.searchsorted(cumulative, point, side="right"), artists - 1)

    pairs = _distinct_pairs(rng, targets, artists, draw)
    user, artist = pairs // artists, pairs % artists
    in_genre = (artist_genre[artist] == taste[user, 0]) | (artist_genre[artist] == taste[user, 1])
    user_scale = rng.lognormal(0.0, USER_SCALE_SIGMA, users)
    plays = np.ceil(
        rng.lognormal(np.log(PLAYS_MEDIAN), PLAYS_SIGMA, len(pairs))
        * user_scale[user]
        * np.where(in_genre, IN_GENRE_BOOST, 1.0)
    ).astype(np.int64)
    order = np.lexsort((-plays, user))
    user, artist, plays = user[order], artist[order], plays[order]

    table = {
        "user": _user_ids(rng, users),
        "mbid": _mbids(rng, artists),
        "name": pa.array(_names(rng, artists)),
    }
    _write(Path(path), table, user, artist, plays)
    return Path(path)


def _zipf(n: int, exponent: float) -> np.ndarray:
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


def _zipf_weights(rank: np.ndarray, offset: float, exponent: float) -> np.ndarray:
    return (rank + 1.0 + offset) ** -exponent


def _targets(rng: np.random.Generator, users: int, rows: int, cap: int) -> np.ndarray:
    """Artists per user: >= 1, <= cap, log-normal shares, summing to exactly ``rows``."""
    weight = rng.lognormal(0.0, ACTIVITY_SIGMA, users)
    targets = np.ones(users, dtype=np.int64) + rng.multinomial(rows - users, weight / weight.sum())
    while (over := np.maximum(targets - cap, 0)).any():  # rare: re-deal what the heaviest exceed
        targets -= over
        room = cap - targets
        targets += rng.multinomial(over.sum(), room / room.sum())
    return targets


def _distinct_pairs(rng: np.random.Generator, targets: np.ndarray, artists: int, draw) -> np.ndarray:
    """Sorted int64 pair keys ``user * artists + artist``: ``targets[u]`` distinct artists per user.

    Draws with replacement in rounds, 20% over what is missing, drops repeats, and keeps a random
    subset of each user's new artists up to the target.
    """
    users = np.arange(len(targets))
    kept = np.empty(0, dtype=np.int64)
    missing = targets.copy()
    round_ = 0
    while missing.any():
        owner = np.repeat(users, missing + np.ceil(missing * 0.2).astype(np.int64))
        fresh = _sorted_unique(owner * artists + draw(owner, round_))
        if len(kept):
            at = np.minimum(np.searchsorted(kept, fresh), len(kept) - 1)
            fresh = fresh[kept[at] != fresh]
        owner = fresh // artists
        by_user = np.lexsort((rng.random(len(fresh)), owner))
        owner_sorted = owner[by_user]
        rank = np.arange(len(fresh)) - np.searchsorted(owner_sorted, owner_sorted, side="left")
        kept = np.sort(np.concatenate([kept, fresh[by_user[rank < missing[owner_sorted]]]]))
        missing = targets - np.bincount(kept // artists, minlength=len(targets))
        round_ += 1
    return kept


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    # Sort-based on purpose: NumPy 2.4's hash-based np.unique is ~50x slower on these int64 keys.
    ordered = np.sort(values)
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def _hex(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    """``n`` x ``2 * width`` uint8: rows of random lower-case hex digits (8 * width random bits,
    so rows are distinct for all practical purposes)."""
    raw = np.frombuffer(rng.bytes(n * width), dtype=np.uint8).reshape(n, width)
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    chars = np.empty((n, 2 * width), dtype=np.uint8)
    chars[:, 0::2], chars[:, 1::2] = digits[raw >> 4], digits[raw & 15]
    return chars


def _user_ids(rng: np.random.Generator, n: int) -> pa.Array:
    """SHA-1-like user ids (40 hex digits), sorted so the file is in user order like the original."""
    return pa.array(np.sort(_hex(rng, n, 20).view("S40").ravel())).cast(pa.string())


def _mbids(rng: np.random.Generator, n: int) -> pa.Array:
    """MusicBrainz-style ids (8-4-4-4-12 hex), empty for a random EMPTY_MBID_SHARE of artists."""
    chars = _hex(rng, n, 16)
    dashed = np.full((n, 36), ord("-"), dtype=np.uint8)
    for start, (lo, hi) in zip((0, 9, 14, 19, 24), ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))):
        dashed[:, start : start + hi - lo] = chars[:, lo:hi]
    ids = pa.array(dashed.view("S36").ravel()).cast(pa.string())
    return pa.array(np.where(rng.random(n) < EMPTY_MBID_SHARE, "", ids.to_numpy(zero_copy_only=False)))


def _names(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct readable artist names (distinct also lower-cased), in random order.

    Patterns never collide: one word; "Given Word"; "The Adjective Nouns"; "Word & the Nouns";
    "Adjective Noun" (GIVEN_NAMES and ADJECTIVES share no word).
    """
    syllables = np.array([o + v for o in ONSETS for v in VOWELS])
    s = len(syllables)
    n_words = s**2 + s**3
    index = np.arange(n_words)
    two = np.char.add(syllables[index // s % s], syllables[index % s])
    words = np.where(index < s**2, two, np.char.add(syllables[index // s**2 % s], two))
    words = np.char.capitalize(words[rng.permutation(n_words)])
    adjectives, nouns, given = np.array(ADJECTIVES), np.array(NOUNS), np.array(GIVEN_NAMES)

    def pair(a: np.ndarray, b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = rng.choice(len(a) * len(b), size=k, replace=False)
        return a[chosen // len(b)], b[chosen % len(b)]

    phrases = len(adjectives) * len(nouns)
    count = {
        "word": min(n // 4, n_words),
        "band": min(n // 5, n_words * len(nouns)),
        "the": min(n // 10, phrases),
        "plain": min(n // 10, phrases),
    }
    count["person"] = n - sum(count.values())  # Given Word: 13 M combinations, room for the rest
    parts = [
        words[: count["word"]],
        _join(*pair(given, words, count["person"]), sep=" "),
        _join(*pair(adjectives, nouns, count["the"]), sep=" ", prefix="The ", suffix="s"),
        _join(*pair(words, nouns, count["band"]), sep=" & the ", suffix="s"),
        _join(*pair(adjectives, nouns, count["plain"]), sep=" "),
    ]
    names = np.concatenate(parts)
    return names[rng.permutation(n)]


def _join(a: np.ndarray, b: np.ndarray, sep: str, prefix: str = "", suffix: str = "") -> np.ndarray:
    return np.char.add(np.char.add(np.char.add(prefix, a), sep), np.char.add(b, suffix))


def _write(path: Path, columns: dict[str, pa.Array], user: np.ndarray, artist: np.ndarray, plays: np.ndarray) -> None:
    """Stream the rows to ``path``, atomically."""
    schema = pa.schema([("user", pa.string()), ("mbid", pa.string()), ("name", pa.string()), ("plays", pa.int64())])
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with atomic_path(path) as temp, pacsv.CSVWriter(str(temp), schema, write_options=options) as writer:
        for start in range(0, len(user), WRITE_BATCH):
            stop = start + WRITE_BATCH
            u, a = pa.array(user[start:stop]), pa.array(artist[start:stop])
            writer.write_batch(
                pa.record_batch(
                    [
                        columns["user"].take(u),
                        columns["mbid"].take(a),
                        columns["name"].take(a),
                        pa.array(plays[start:stop]),
                    ],
                    schema=schema,
                )
            )
