"""The task families: seeded generators and their scorers.

``generate(family, size_chars, seed)`` is a pure function: the same arguments give the
same task (context, question, gold answer) on every machine and Python version
(``random.Random`` seeded with a string is stable across runs and hash seeds).

Families:

* ``niah`` (S-NIAH): one needle, "The access code for warehouse Zephyr is 4821-KQ.", at a
  seeded depth in a haystack of log lines, prose or records, with three distractor
  needles about other warehouses. Scored 1 when the answer holds the gold code and no
  distractor code.
* ``multihop``: two or three linked facts (person -> company -> city, or person ->
  project -> company -> city) far apart, among distractor facts of the same shapes.
  Scored 1 when the answer names the gold city and no other city of the context.
* ``oolong`` (OOLONG-style aggregation): customer messages whose topic is implied by what
  they say, never written as a tag. Questions ask for a count (scored 0.75**|diff|, the
  OOLONG paper's scoring), the most common topic, or a comparison of two topics (exact).
* ``pairs`` (OOLONG-Pairs-style): the same kind of messages from a dozen users; the
  answer lists the pairs of users meeting a condition on their topics, scored by F1
  over pairs.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("niah", "multihop", "oolong", "pairs")

# -- shared vocabulary -------------------------------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FIRST_NAMES = _words(
    "Samir Ada Lena Tomas Noor Ivan Mei Carlos Ingrid Kofi Yara Emil Sofia Rafael Hana Omar "
    "Greta Luca Amara Felix Zoe Arjun Nadia Pavel Iris Mateo Leila Jonas Priya Oskar Aiko Bruno "
    "Dalia Henrik Esme Tariq Vera Nils Alma Ruben"
)
LAST_NAMES = _words(
    "Silva Kim Novak Okafor Berg Haddad Tanaka Moreau Costa Lindqvist Mensah Petrov Rossi "
    "Schmidt Alvarez Nakamura Dubois Kowalski Ferreira Jensen Osei Varga Horvat Quinn Brennan "
    "Sato Ibrahim Laine Marsh Duarte Weiss Abara Holm Castillo Farouk Greco Yilmaz Lund Pereira Raman"
)
CITIES = _words(
    "Porto Lyon Turin Graz Leeds Bergen Krakow Malmo Ghent Bilbao Split Tartu Aarhus Cork Basel "
    "Bremen Utrecht Nantes Seville Brno Tampere Lodz Espoo Odense Linz Genoa Bari Cluj Varna Riga "
    "Vilnius Tallinn Zadar Kosice Plovdiv Gdansk Trondheim Uppsala Leuven Salzburg"
)
COMPANY_HEADS = _words(
    "Vel Nor Kest Bram Cor Tal Zen Mar Quor Sil Dra Fen Hal Ost Pry Rin Tor Ulm Var Wex"
)
COMPANY_TAILS = _words("trax vane lite ford mont ix ora tek wyn dale quist bury")
COMPANY_KINDS = _words("Systems Logistics Labs Holdings Foods Energy Media Works")
PROJECT_WORDS = _words(
    "Falcon Heron Kestrel Osprey Puffin Raven Swift Tern Wren Lark Finch Egret Ibis Crane Plover"
)
WAREHOUSES = _words(
    "Zephyr Orion Juniper Basalt Cobalt Ember Fjord Granite Harbor Indigo Jasper Kelvin Lumen "
    "Meridian Nimbus Obsidian Pinnacle Quartz Rookery Saffron Tundra Umber Vantage Willow"
)

# -- haystacks -------------------------------------------------------------------------

HAYSTACKS = ("logs", "prose", "records")

_SERVICES = _words(
    "auth billing-api search gateway scheduler mailer indexer cache thumbnails export"
)
_LOG_EVENTS = (
    "request {hex} served in {ms} ms with status 200",
    "cache miss for key {hex}, fetched from origin in {ms} ms",
    "session {hex} refreshed for client {k}",
    "retrying upstream call ({k}/5) after a timeout",
    "health check passed, {k} workers idle",
    "queue depth is {k}, lag {ms} ms",
    "flushed {k} records to disk in {ms} ms",
    "connection pool at {k} of 64 connections",
    "rotated log file, {k} MB archived",
    "slow query took {ms} ms on shard {k}",
)
_PROSE_SUBJECTS = (
    "The committee",
    "A small team of volunteers",
    "The old library",
    "Our neighbour",
    "The village choir",
    "A travelling painter",
    "The harbour master",
    "The school garden club",
    "An elderly baker",
    "The night watchman",
    "A group of students",
    "The museum curator",
)
_PROSE_VERBS = (
    "repainted",
    "discussed",
    "carried",
    "photographed",
    "repaired",
    "described",
    "measured",
    "decorated",
    "catalogued",
    "rebuilt",
    "visited",
    "admired",
)
_PROSE_OBJECTS = (
    "the wooden bridge",
    "a row of lanterns",
    "the stone fountain",
    "several crates of apples",
    "the faded mural",
    "an antique clock",
    "the river path",
    "a pile of old maps",
    "the greenhouse roof",
    "the bell tower",
    "a long letter",
    "the winter market stalls",
)
_PROSE_TAILS = (
    "before the first snow",
    "while the rain kept falling",
    "on a quiet Sunday morning",
    "after a long debate",
    "with more patience than expected",
    "just before sunset",
    "to everyone's surprise",
    "during the spring festival",
    "in less than a week",
    "without telling anyone",
    "as the town slept",
    "for the third year in a row",
)
_PLANS = _words("basic plus family premium student")


def _hex(rng: random.Random, n: int = 8) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _date(rng: random.Random) -> str:
    return f"20{rng.randint(19, 24)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _log_line(rng: random.Random, index: int) -> str:
    seconds = 3600 * 8 + index * 7 + rng.randint(0, 6)
    stamp = f"2024-03-05T{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}Z"
    level = rng.choice(("INFO", "INFO", "INFO", "DEBUG", "WARN"))
    event = rng.choice(_LOG_EVENTS).format(
        hex=_hex(rng), ms=rng.randint(2, 900), k=rng.randint(1, 60)
    )
    return f"{stamp} {level} [{rng.choice(_SERVICES)}] {event}"


def _prose_line(rng: random.Random, index: int) -> str:
    sentences = [
        f"{rng.choice(_PROSE_SUBJECTS)} {rng.choice(_PROSE_VERBS)} "
        f"{rng.choice(_PROSE_OBJECTS)} {rng.choice(_PROSE_TAILS)}."
        for _ in range(rng.randint(3, 6))
    ]
    return " ".join(sentences)


def _record_line(rng: random.Random, index: int) -> str:
    return (
        f"record {index:06d} | customer={rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)[0]}. "
        f"| city={rng.choice(CITIES)} | plan={rng.choice(_PLANS)} | joined={_date(rng)} "
        f"| visits={rng.randint(1, 400)}"
    )


_FILLERS = {"logs": _log_line, "prose": _prose_line, "records": _record_line}


def _styled(kind: str, rng: random.Random, sentence: str) -> str:
    """A special line (a needle, a fact) dressed as a line of the haystack ``kind``."""
    if kind == "logs":
        return f"2024-03-05T{rng.randint(8, 20):02d}:{rng.randint(0, 59):02d}:00Z NOTE [ops] {sentence}"
    if kind == "records":
        return f"record {rng.randint(0, 999999):06d} | note={sentence}"
    return sentence


def _haystack(
    rng: random.Random, kind: str, size_chars: int, inserts: list[tuple[float, str]]
) -> str:
    """Filler lines of ``kind`` with each ``(depth, line)`` of ``inserts`` placed at that
    fraction of the text; about ``size_chars`` characters in all (whole lines)."""
    budget = size_chars - sum(len(line) + 1 for _, line in inserts)
    lines: list[str] = []
    total = 0
    make = _FILLERS[kind]
    while True:
        line = make(rng, len(lines))
        if lines and total + len(line) + 1 > budget:
            break
        lines.append(line)
        total += len(line) + 1
    # Insert from the deepest first so that earlier offsets stay valid.
    offsets = []
    running = 0
    for line in lines:
        offsets.append(running)
        running += len(line) + 1
    for depth, line in sorted(inserts, key=lambda item: -item[0]):
        target = depth * running
        index = next((i for i, off in enumerate(offsets) if off >= target), len(lines))
        lines.insert(index, line)
    return "\n".join(lines)


# -- customer messages (oolong, pairs) -----------------------------------------------

#: Topic -> what it covers (said in the question) and message templates that imply it
#: without naming it. No template holds a topic's name.
TOPICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "billing": (
        "payments, charges, invoices",
        (
            "I was charged twice for order {n}, please refund the second payment.",
            "There is a fee of {amount} dollars on my {month} invoice that I never agreed to.",
            "My card was debited {amount} dollars but my plan costs less than that.",
            "Why did the amount on my statement go up in {month} without any notice?",
            "The receipt for order {n} shows the wrong tax, can you send a corrected one?",
            "I paid by bank transfer on {day} and the payment still shows as pending.",
        ),
    ),
    "delivery": (
        "parcels, couriers, tracking",
        (
            "My parcel was supposed to arrive on {day} and it still is not here.",
            "The courier left the box at the wrong address for the {ordinal} time.",
            "Tracking for order {n} has not moved in {k} days.",
            "The package arrived crushed and the {item} inside was broken.",
            "Can the driver leave order {n} with a neighbour if I am out on {day}?",
            "Two of the {k} boxes I ordered never showed up at my door.",
        ),
    ),
    "technical": (
        "crashes, errors, bugs in the app",
        (
            "The app crashes every time I open the settings page on my {device}.",
            "Uploading a photo gives me error {code} and nothing happens.",
            "Since the update on {day} the screen stays blank after the logo.",
            "The sync button spins forever and my notes never reach my {device}.",
            "Export to PDF produces an empty file on my {device}.",
            "The search box freezes for {k} seconds whenever I type a letter.",
        ),
    ),
    "account": (
        "signing in, passwords, profile settings",
        (
            "I cannot sign in, it says my password is wrong even after I reset it on {day}.",
            "The verification email never reaches my inbox, so I am locked out.",
            "How do I change the email address tied to my profile?",
            "Someone signed in to my profile from {city} and it was not me.",
            "My two-step code is rejected every time I try to log in on my {device}.",
            "I want to merge my two logins into one, they use different emails.",
        ),
    ),
    "praise": (
        "compliments and thanks",
        (
            "Just wanted to say the new dashboard is wonderful, great job to the team.",
            "Your agent {name} was patient and solved everything, thank you!",
            "Best purchase I made this year, the {item} works perfectly.",
            "Loving the dark mode, it is so easy on the eyes at night.",
            "Five stars, the setup took less than {k} minutes.",
            "Thank you for the quick reply on {day}, you made my week.",
        ),
    ),
    "cancellation": (
        "ending a subscription or contract",
        (
            "Please end my subscription when the current period finishes in {month}.",
            "I would like to stop my membership, how do I do that?",
            "Please terminate my contract before it renews on {day}.",
            "I am moving abroad in {month}, so please close my plan for good.",
            "Do not renew my plan next month, I no longer need the service.",
            "How can I quit the premium tier and go back to the free one?",
        ),
    ),
}
TOPIC_NAMES = tuple(TOPICS)
TOPIC_LIST = ", ".join(f"{name} ({about})" for name, (about, _) in TOPICS.items())

_SLOTS: dict[str, Any] = {
    "n": lambda rng: str(rng.randint(10000, 99999)),
    "amount": lambda rng: str(rng.randint(3, 250)),
    "k": lambda rng: str(rng.randint(2, 12)),
    "month": lambda rng: rng.choice(_words("January February March April May June July")),
    "day": lambda rng: rng.choice(_words("Monday Tuesday Wednesday Thursday Friday Saturday")),
    "ordinal": lambda rng: rng.choice(("second", "third", "fourth", "fifth")),
    "item": lambda rng: rng.choice(("lamp", "kettle", "blender", "speaker", "mirror", "chair")),
    "device": lambda rng: rng.choice(("phone", "tablet", "laptop", "desktop", "watch")),
    "code": lambda rng: f"E{rng.randint(100, 999)}",
    "city": lambda rng: rng.choice(CITIES),
    "name": lambda rng: rng.choice(FIRST_NAMES),
}

#: One message line: "Message 17 | user u4821 | 2024-05-03: <text>".
MESSAGE_FORMAT = "Message {number} | user {user} | {date}: {text}"
MESSAGE_RE = re.compile(r"^Message (\d+) \| user (u\d+) \| (\d{4}-\d{2}-\d{2}): (.*)$", re.M)


def message_text(rng: random.Random, topic: str) -> str:
    template = rng.choice(TOPICS[topic][1])
    return template.format(**{slot: _SLOTS[slot](rng) for slot in _fields(template)})


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def template_regex(
    template: str,
    fixed: dict[str, str] | None = None,
    raw: dict[str, str] | None = None,
    **groups: str,
) -> str:
    """A regex for ``template`` (a ``str.format`` string): ``fixed`` fields as their
    literal value, ``raw`` fields as given (unescaped), ``groups`` fields as that
    capturing pattern, any other field as ``.+?``."""
    fixed, raw = fixed or {}, raw or {}
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is None:
            continue
        if name in fixed:
            parts.append(re.escape(fixed[name]))
        elif name in raw:
            parts.append(raw[name])
        elif name in groups:
            parts.append(f"({groups[name]})")
        else:
            parts.append(".+?")
    return "".join(parts)


_TOPIC_RES = {
    topic: re.compile("|".join(f"(?:{template_regex(t)})" for t in templates))
    for topic, (_, templates) in TOPICS.items()
}


def topic_of(text: str) -> str | None:
    """The topic a message text was generated from (the perfect reader the oracle uses)."""
    found = [topic for topic, rx in _TOPIC_RES.items() if rx.fullmatch(text)]
    return found[0] if len(found) == 1 else None


# -- questions ---------------------------------------------------------------------------

TOPICS_INTRO = (
    "Every line that starts with 'Message' is a customer message about exactly one topic. "
    "The topic is not written in the message: it has to be read from what the message says. "
    "The topics are: " + TOPIC_LIST + "."
)
QUESTIONS = {
    "niah": "What is the access code for warehouse {name}? Answer with the code only.",
    "multihop2": (
        "In which city is the company that {person} works for headquartered? "
        "Answer with the city name only."
    ),
    "multihop3": (
        "In which city is the company that runs the project led by {person} headquartered? "
        "Answer with the city name only."
    ),
    "count": TOPICS_INTRO + " How many messages are about {x}? Answer with a number only.",
    "most": TOPICS_INTRO + " Which topic do the most messages have? Answer with the topic only.",
    "compare": (
        TOPICS_INTRO + " Are messages about {x} more common, less common, or the same frequency "
        "as messages about {y}? Answer with 'more common', 'less common' or 'same frequency'."
    ),
    "pairs_both": (
        TOPICS_INTRO + " List every pair of different users who both wrote at least one "
        "message about {x}. Write one pair per line as (uA, uB), the smaller ID first."
    ),
    "pairs_either": (
        TOPICS_INTRO + " List every pair of different users where one wrote at least one "
        "message about {x} and the other wrote at least one message about {y}. Write one pair "
        "per line as (uA, uB), the smaller ID first."
    ),
}
COMPARISONS = ("more common", "less common", "same frequency")

NEEDLE = "The access code for warehouse {name} is {code}."
WORKS_FOR = "{person} works for {company}."
LEADS = "{person} leads the project {project}."
RUN_BY = "The project {project} is run by {company}."
HEADQUARTERED = "{company} is headquartered in {city}."


# -- tasks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One generated task. ``kind`` picks the scorer: ``code`` and ``label`` (exact, with
    ``candidates`` the wrong answers that void it), ``number`` (0.75**|diff|), ``pairs``
    (F1). ``info`` says how it was built (haystack, depths, counts)."""

    family: str
    size_chars: int
    seed: int
    context: str
    question: str
    gold: Any
    kind: str
    candidates: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def score(self, response: str | None) -> float:
        return score(self.kind, self.gold, response, self.candidates)

    def spec(self) -> dict[str, Any]:
        """Everything but the context, as JSON-able data."""
        return {
            "family": self.family,
            "size_chars": self.size_chars,
            "seed": self.seed,
            "context_chars": len(self.context),
            "question": self.question,
            "gold": self.gold,
            "kind": self.kind,
            "candidates": list(self.candidates),
            "info": self.info,
        }


def generate(family: str, size_chars: int, seed: int) -> Task:
    """The task of ``family`` with a context of about ``size_chars`` characters."""
    if family not in _GENERATORS:
        raise ValueError(f"unknown task family {family!r}; accepted: {', '.join(FAMILIES)}")
    if size_chars < 2000:
        raise ValueError(f"size_chars must be at least 2000, got {size_chars}")
    rng = random.Random(f"{family}/{size_chars}/{seed}")
    return _GENERATORS[family](rng, size_chars, seed)


def _niah(rng: random.Random, size_chars: int, seed: int) -> Task:
    kind = HAYSTACKS[seed % len(HAYSTACKS)]
    names = rng.sample(WAREHOUSES, 4)

    def code() -> str:
        return f"{rng.randint(1000, 9999)}-{rng.choice(string.ascii_uppercase)}{rng.choice(string.ascii_uppercase)}"

    codes = [code() for _ in names]
    while len(set(codes)) < len(codes):
        codes = [code() for _ in names]
    depth = round(rng.uniform(0.05, 0.95), 3)
    inserts = [(depth, _styled(kind, rng, NEEDLE.format(name=names[0], code=codes[0])))]
    for name, other in zip(names[1:], codes[1:], strict=True):
        inserts.append(
            (rng.uniform(0.02, 0.98), _styled(kind, rng, NEEDLE.format(name=name, code=other)))
        )
    context = _haystack(rng, kind, size_chars, inserts)
    return Task(
        family="niah",
        size_chars=size_chars,
        seed=seed,
        context=context,
        question=QUESTIONS["niah"].format(name=names[0]),
        gold=codes[0],
        kind="code",
        candidates=tuple(codes[1:]),
        info={"haystack": kind, "depth": depth, "warehouse": names[0], "distractors": names[1:]},
    )


def _unique(rng: random.Random, count: int, make: Any) -> list[str]:
    """``count`` distinct values of ``make(rng)``, in the order drawn."""
    values: dict[str, None] = {}
    while len(values) < count:
        values.setdefault(make(rng), None)
    return list(values)


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _company(rng: random.Random) -> str:
    return f"{rng.choice(COMPANY_HEADS)}{rng.choice(COMPANY_TAILS)} {rng.choice(COMPANY_KINDS)}"


def _project(rng: random.Random) -> str:
    return f"{rng.choice(PROJECT_WORDS)}-{rng.randint(10, 99)}"


def _multihop(rng: random.Random, size_chars: int, seed: int) -> Task:
    hops = 2 if seed % 2 == 0 else 3
    kind = ("prose", "logs")[seed // 2 % 2]
    # Distractor facts grow with the text (one person per ~3,000 characters).
    people = _unique(rng, max(6, size_chars // 3000) + 1, _person)
    companies = _unique(rng, max(4, len(people) // 3) + 1, _company)
    projects = _unique(rng, len(people), _project)
    city = rng.choice(CITIES)
    others = [c for c in CITIES if c != city]
    hq = {companies[0]: city, **{c: rng.choice(others) for c in companies[1:]}}
    works = {p: rng.choice(companies[1:]) for p in people[1:]}
    works[people[0]] = companies[0]

    def facts_of(person: str) -> list[str]:
        if hops == 2:
            return [WORKS_FOR.format(person=person, company=works[person])]
        project = projects[people.index(person)]
        return [
            LEADS.format(person=person, project=project),
            RUN_BY.format(project=project, company=works[person]),
        ]

    chain = [*facts_of(people[0]), HEADQUARTERED.format(company=companies[0], city=city)]
    # The chain's facts far apart: one in each equal slice of the text, in shuffled order.
    slots = list(range(len(chain)))
    rng.shuffle(slots)
    width = 1.0 / len(chain)
    depths = [round((slot + rng.uniform(0.15, 0.85)) * width, 3) for slot in slots]
    inserts = [(d, _styled(kind, rng, fact)) for d, fact in zip(depths, chain, strict=True)]
    # Distractors of the same shapes, about the other people and companies.
    distractors = [fact for person in people[1:] for fact in facts_of(person)]
    distractors += [HEADQUARTERED.format(company=c, city=hq[c]) for c in companies[1:]]
    inserts += [(rng.random(), _styled(kind, rng, fact)) for fact in distractors]
    context = _haystack(rng, kind, size_chars, inserts)
    template = QUESTIONS["multihop2" if hops == 2 else "multihop3"]
    return Task(
        family="multihop",
        size_chars=size_chars,
        seed=seed,
        context=context,
        question=template.format(person=people[0]),
        gold=city,
        kind="label",
        candidates=tuple(sorted(set(hq.values()) - {city})),
        info={"hops": hops, "haystack": kind, "depths": depths, "chain": chain},
    )


def _messages(
    rng: random.Random, size_chars: int, pick: Any
) -> tuple[list[str], list[tuple[str, str]]]:
    """Message lines up to ``size_chars``; ``pick(index)`` gives (user, topic)."""
    lines: list[str] = []
    labels: list[tuple[str, str]] = []
    total = 0
    while True:
        user, topic = pick(len(lines))
        line = _message_line(rng, len(lines) + 1, user, topic)
        if lines and total + len(line) + 1 > size_chars:
            break
        lines.append(line)
        labels.append((user, topic))
        total += len(line) + 1
    return lines, labels


def _message_line(rng: random.Random, number: int, user: str, topic: str) -> str:
    return MESSAGE_FORMAT.format(
        number=number, user=user, date=_date(rng), text=message_text(rng, topic)
    )


def _users(rng: random.Random, count: int) -> list[str]:
    return [f"u{n}" for n in sorted(rng.sample(range(1000, 10000), count))]


def _oolong(rng: random.Random, size_chars: int, seed: int) -> Task:
    users = _users(rng, 40)
    weights = [rng.uniform(0.4, 2.0) for _ in TOPIC_NAMES]
    question_kind = ("count", "most", "compare")[seed % 3]
    lines, labels = _messages(
        rng, size_chars, lambda i: (rng.choice(users), rng.choices(TOPIC_NAMES, weights)[0])
    )
    counts = Counter(topic for _, topic in labels)
    if question_kind == "most":
        # The most common topic must be unique: on a tie, one message of the runner-up
        # becomes one of the leader's.
        (top, top_n), (second, second_n) = counts.most_common(2)
        if top_n == second_n:
            index = max(i for i, (_, topic) in enumerate(labels) if topic == second)
            user = labels[index][0]
            lines[index] = _message_line(rng, index + 1, user, top)
            labels[index] = (user, top)
            counts = Counter(topic for _, topic in labels)
    context = "\n".join(lines)
    x, y = rng.sample(TOPIC_NAMES, 2)
    if question_kind == "count":
        question, gold, kind, candidates = QUESTIONS["count"].format(x=x), counts[x], "number", ()
    elif question_kind == "most":
        question, gold, kind = QUESTIONS["most"], counts.most_common(1)[0][0], "label"
        candidates = tuple(t for t in TOPIC_NAMES if t != gold)
    else:
        question = QUESTIONS["compare"].format(x=x, y=y)
        gold = (
            "more common"
            if counts[x] > counts[y]
            else "less common"
            if counts[x] < counts[y]
            else "same frequency"
        )
        kind, candidates = "label", tuple(c for c in COMPARISONS if c != gold)
    return Task(
        family="oolong",
        size_chars=size_chars,
        seed=seed,
        context=context,
        question=question,
        gold=gold,
        kind=kind,
        candidates=candidates,
        info={"question": question_kind, "messages": len(labels), "counts": dict(counts)},
    )


def _pairs(rng: random.Random, size_chars: int, seed: int) -> Task:
    users = _users(rng, rng.randint(10, 14))
    # Each user writes mostly about one main topic, and once or twice in the whole text
    # about up to two rare ones, at random places: a cut of the text misses most of those.
    main = {user: rng.choice(TOPIC_NAMES) for user in users}
    rare = [
        (user, topic)
        for user in users
        for topic in rng.sample([t for t in TOPIC_NAMES if t != main[user]], rng.randint(0, 2))
        for _ in range(rng.randint(1, 2))
    ]
    expected = max(len(rare), size_chars // 130)  # fewer than the messages that will fit
    placed = dict(zip(rng.sample(range(expected), len(rare)), rare, strict=True))

    def pick(index: int) -> tuple[str, str]:
        if index in placed:
            return placed[index]
        user = rng.choice(users)
        return user, main[user]

    lines, labels = _messages(rng, size_chars, pick)
    context = "\n".join(lines)
    wrote: dict[str, set[str]] = {user: set() for user in users}
    for user, topic in labels:
        wrote[user].add(topic)
    writers = {t: sorted(u for u in users if t in wrote[u]) for t in TOPIC_NAMES}
    # Ten or more users, six main topics: some topic always has two writers.
    usable = [t for t in TOPIC_NAMES if len(writers[t]) >= 2]
    x = rng.choice(usable)
    if seed % 2 == 0:
        condition = "both"
        question = QUESTIONS["pairs_both"].format(x=x)
        gold_pairs = {(a, b) for a in writers[x] for b in writers[x] if a < b}
        y = None
    else:
        condition = "either"
        y = rng.choice([t for t in TOPIC_NAMES if t != x and writers[t]])
        question = QUESTIONS["pairs_either"].format(x=x, y=y)
        gold_pairs = {tuple(sorted((a, b))) for a in writers[x] for b in writers[y] if a != b}
    return Task(
        family="pairs",
        size_chars=size_chars,
        seed=seed,
        context=context,
        question=question,
        gold=sorted([list(p) for p in gold_pairs]),
        kind="pairs",
        info={
            "condition": condition,
            "x": x,
            "y": y,
            "users": len(users),
            "messages": len(labels),
            "rare_mentions": len(rare),
        },
    )


_GENERATORS = {"niah": _niah, "multihop": _multihop, "oolong": _oolong, "pairs": _pairs}


# -- scoring -----------------------------------------------------------------------------


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def _mentions(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(_norm(phrase))}(?![\w-])", text) is not None


def score_exact(response: str, gold: str, candidates: tuple[str, ...] | list[str] = ()) -> float:
    """1.0 when ``response`` names ``gold`` and none of the wrong ``candidates``."""
    text = _norm(response)
    if not _mentions(text, gold):
        return 0.0
    return 0.0 if any(_mentions(text, c) for c in candidates if _norm(c) != _norm(gold)) else 1.0


def parse_number(response: str) -> int | None:
    """The first integer in ``response`` (thousands separators allowed), or None."""
    match = re.search(r"-?\d[\d,]*", response)
    if match is None:
        return None
    digits = match.group(0).replace(",", "")
    return int(digits) if digits.lstrip("-") else None


def score_number(response: str, gold: int) -> float:
    """OOLONG's numeric score: 0.75 ** |answer - gold| (0 without a number)."""
    value = parse_number(response)
    return 0.0 if value is None else 0.75 ** abs(value - int(gold))


_PAIR_RE = re.compile(r"\(\s*['\"]?(u\d+)['\"]?\s*,\s*['\"]?(u\d+)['\"]?\s*\)")
_USER_RE = re.compile(r"\bu\d+\b")


def parse_pairs(response: str) -> set[frozenset[str]]:
    """Unordered pairs of user IDs: ``(u1, u2)`` tuples, else lines naming exactly two IDs."""
    pairs = {frozenset(m.groups()) for m in _PAIR_RE.finditer(response)}
    if not pairs:
        for line in response.splitlines():
            ids = _USER_RE.findall(line)
            if len(ids) == 2:
                pairs.add(frozenset(ids))
    return {p for p in pairs if len(p) == 2}


def score_pairs(response: str, gold: list[list[str]]) -> float:
    """F1 of the pairs in ``response`` against the gold pairs."""
    predicted = parse_pairs(response)
    truth = {frozenset(p) for p in gold}
    hits = len(predicted & truth)
    if not hits:
        return 0.0
    precision, recall = hits / len(predicted), hits / len(truth)
    return 2 * precision * recall / (precision + recall)


def score(kind: str, gold: Any, response: str | None, candidates: Any = ()) -> float:
    """The score of ``response`` (None: no answer, 0.0) for a task of ``kind``."""
    if response is None:
        return 0.0
    response = str(response)
    if kind in ("code", "label"):
        return score_exact(response, str(gold), tuple(candidates))
    if kind == "number":
        return score_number(response, int(gold))
    if kind == "pairs":
        return score_pairs(response, gold)
    raise ValueError(f"unknown score kind {kind!r}; accepted: code, label, number, pairs")
