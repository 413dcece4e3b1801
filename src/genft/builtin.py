"""genft's own small data set: all five tasks, two domains each, generated deterministically from templates
and word lists kept in this file, so that everything runs on a fresh machine with no download.

Each task has a training domain (in-domain test + train splits) and a second domain with other vocabulary
and phrasing (out-of-domain test), so that fine-tuning shows a real domain shift.
"""
from __future__ import annotations

import random
from typing import Callable

from . import data as _data
from .data import BUILTIN_DATASETS
from .data import BUILTIN_DEMO_POOL as DEMO_POOL
from .data import BUILTIN_TEST_SIZE as TEST_SIZE
from .data import BUILTIN_TRAIN_SIZES as TRAIN_SIZES
from .prompts import get_task

# ================================================================ the generator
#
# Every data set is drawn from its own random.Random(seed) (never the global generator), so that the same
# call writes byte-identical files.  Items are drawn per label into pools of unique inputs, then dealt into
# splits with exact label quotas: test, demos (every label among the first len(labels) demos), and for
# training sets train chunks of 100 + 100 + 200, so train_100 and train_200 are balanced prefixes of train_400.


GENERATOR_VERSION = 1

SEEDS = {
    "builtin_sports": 1101,
    "builtin_weather": 1102,
    "builtin_social": 2201,
    "builtin_science": 2202,
    "builtin_products": 3301,
    "builtin_restaurants": 3302,
    "builtin_people": 4401,
    "builtin_questions": 4402,
    "builtin_work": 5501,
    "builtin_nature": 5502,
}

NAMES = ["Alex", "Jordan", "Sam", "Taylor", "Morgan", "Casey", "Riley", "Jamie", "Avery", "Quinn", "Robin",
         "Charlie", "Dana", "Emery", "Frankie", "Harper", "Jesse", "Kai", "Logan", "Parker", "Reese", "Skyler"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _two(rng: random.Random, pool):
    a, b = rng.sample(pool, 2)
    return a, b


# ---------------------------------------------------------------- summary / sports (in)

TEAMS = ["Riverton Rovers", "Ashford Albion", "Millbrook United", "Kingsport Athletic", "Eastvale City",
         "Northgate Wanderers", "Harbour Town", "Westfield Rangers", "Stonebridge Celtic", "Oakham Villa",
         "Brackley Town", "Fairhaven Hotspur", "Granton Rovers", "Redcliffe Dynamo", "Lowmoor Athletic",
         "Castleford Park"]
STADIUM_CITIES = ["Manchester", "Leeds", "Bristol", "Glasgow", "Cardiff", "Belfast", "Dublin", "Liverpool",
                  "Newcastle", "Sheffield", "Norwich", "Brighton"]
PLAYERS = ["Okafor", "Lindqvist", "Moreau", "Haddad", "Kowalski", "Ferreira", "Nakamura", "O'Brien", "Santos",
           "Mensah", "Petrov", "Alvarez", "Brennan", "Dubois", "Eriksen", "Yilmaz"]
ORDINAL_POS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]


def _sports(rng: random.Random, label=None) -> dict:
    w, l = _two(rng, TEAMS)
    city, day = rng.choice(STADIUM_CITIES), rng.choice(DAYS)
    ws = rng.randint(1, 5)
    ls = rng.randint(0, ws - 1)
    p1, p2 = _two(rng, PLAYERS)
    crowd = f"{rng.randint(8, 60)},{rng.randint(0, 9)}00"
    a, b = (w, l) if rng.random() < 0.5 else (l, w)
    intro = rng.choice([
        f"{a} travelled to {city} to face {b} on {day} afternoon.",
        f"{a} and {b} met in {city} on {day} in front of {crowd} supporters.",
        f"A crowd of {crowd} gathered in {city} on {day} to watch {a} take on {b}.",
        f"On {day}, {city} hosted the league meeting between {a} and {b}.",
    ])
    play = rng.choice([
        f"{p1} scored twice for {w}, including a header just before half-time.",
        f"{l} took an early lead through {p2}, but they could not hold on.",
        f"{p2} of {l} was sent off after an hour, which changed the game.",
        f"{w} dominated possession and {p1} struck the crossbar twice.",
        f"Goalkeeper {p2} made several fine saves to keep {l} in the contest.",
    ])
    result = rng.choice([
        f"The final whistle confirmed a {ws}-{ls} win for {w}.",
        f"{w} ran out {ws}-{ls} winners after a hard-fought second half.",
        f"It finished {ws}-{ls} to {w}, who climb to {rng.choice(ORDINAL_POS)} in the table.",
        f"{l} were beaten {ws}-{ls} and stay {rng.choice(ORDINAL_POS)} in the table.",
    ])
    extra = rng.choice([
        f"Manager {rng.choice(PLAYERS)} praised the team's spirit afterwards.",
        "Both sides now prepare for a busy run of fixtures before the winter break.",
    ])
    body = [intro, play, result] if rng.random() < 0.5 else [intro, result, play]
    doc = " ".join(s for s in body + [extra] if s)
    return {"document": doc, "summary": f"{w} beat {l} {ws}-{ls} in {city} on {day}."}


# ---------------------------------------------------------------- summary / weather (out)

REGIONS = ["the northern hills", "the east coast", "the western valleys", "the southern plains", "the capital",
           "the offshore islands", "the lake district", "the central highlands", "the river delta",
           "the border uplands"]
CONDITIONS = [  # (bulletin phrase, summary phrase, plausible daytime highs)
    ("heavy rain", "Heavy rain", (6, 18)), ("bright sunshine", "Sunshine", (14, 31)), ("thick fog", "Fog", (2, 12)),
    ("scattered thunderstorms", "Thunderstorms", (17, 29)), ("light snow", "Snow", (-3, 2)),
    ("strong gales", "Gales", (4, 15)), ("persistent drizzle", "Drizzle", (5, 16)),
    ("freezing sleet", "Sleet", (-2, 3)), ("clear skies", "Clear skies", (8, 27)),
    ("patchy cloud", "Patchy cloud", (9, 24)),
]
WIND_DIRS = ["northerly", "southerly", "easterly", "westerly", "north-westerly", "south-easterly"]


def _weather(rng: random.Random, label=None) -> dict:
    region, day = rng.choice(REGIONS), rng.choice(DAYS)
    phrase, short, (lo, hi) = rng.choice(CONDITIONS)
    t = rng.randint(lo, hi)
    temp = f"{t} degrees" if t != 1 and t != -1 else f"{t} degree"
    wind = rng.choice(WIND_DIRS)
    first = rng.choice([
        f"Forecasters expect {phrase} across {region} on {day}, lasting well into the evening.",
        f"{day} will bring {phrase} to {region}, according to the national weather service.",
        f"Residents of {region} should prepare for {phrase} on {day}, the latest outlook warns.",
    ])
    temp_s = rng.choice([
        f"Temperatures should peak at {temp} in the afternoon before dropping quickly after dark.",
        f"Afternoon highs will reach {temp}, close to the seasonal average.",
        f"The thermometer is forecast to climb no higher than {temp} at any point during the day.",
    ])
    wind_s = rng.choice([
        f"A {wind} wind will pick up during the evening and ease again overnight.",
        f"Gusty {wind} winds may make conditions feel colder.",
        f"Pressure is falling steadily as a {wind} airflow sets in from the sea.",
    ])
    advice = rng.choice([
        "Drivers are advised to allow extra time on the roads.",
        "Farmers will watch the forecast closely after a dry week.", "Conditions should settle by the weekend as high pressure returns.",
    ])
    body = [first, temp_s, wind_s] if rng.random() < 0.5 else [first, wind_s, temp_s]
    doc = " ".join(s for s in body + [advice] if s)
    return {"document": doc, "summary": f"{short} in {region} on {day}, with a high of {temp}."}


# ---------------------------------------------------------------- question / social (in)

SOCIAL_VERBS = [("lent", "lend"), ("gave", "give"), ("brought", "bring"), ("handed", "hand"), ("sent", "send"),
                ("offered", "offer"), ("passed", "pass")]
SOCIAL_OBJECTS = [("a ladder", "was painting the fence"), ("an umbrella", "had to walk home in the rain"),
                  ("a pen", "needed to sign a form"), ("some notes", "was studying for an exam"),
                  ("a jacket", "felt cold at the bus stop"), ("a bike", "had missed the last bus"),
                  ("a charger", "had a dead phone"), ("some flour", "was baking a cake"),
                  ("a map", "was lost in the city"), ("a drill", "was fixing a shelf"),
                  ("a blanket", "was camping that night"), ("some money", "had forgotten a wallet"),
                  ("a book", "was bored on the train"), ("a suitcase", "was going on a trip"),
                  ("a hammer", "was building a birdhouse")]
SOCIAL_TIMES = ["on Saturday", "after lunch", "that morning", "last night", "before the party", "on the weekend"]
FEELINGS = [("proud", "praised the speech at the meeting"), ("grateful", "fixed the broken gate"),
            ("annoyed", "forgot the dinner plans"), ("happy", "sent a birthday card"),
            ("worried", "did not answer the phone"), ("relieved", "found the lost keys"),
            ("embarrassed", "told everyone the secret"), ("excited", "bought concert tickets"),
            ("upset", "cancelled the trip"), ("surprised", "arrived a day early")]


def _social(rng: random.Random, label=None) -> dict:
    a, b = _two(rng, NAMES)
    if rng.random() < 0.25:  # feelings
        feel, event = rng.choice(FEELINGS)
        context = f"{a} felt {feel} after {b} {event}."
        answer, question = rng.choice([
            (feel, f"How did {a} feel after {b} {event}?"),
            (f"because {b} {event}", f"Why did {a} feel {feel}?"),
            (b, f"Who made {a} feel {feel}?"),
        ])
        return {"context": context, "answer": answer, "question": question}
    (past, base), (obj, reason) = rng.choice(SOCIAL_VERBS), rng.choice(SOCIAL_OBJECTS)
    time = rng.choice(SOCIAL_TIMES) if rng.random() < 0.4 else ""
    clause = f"{a} {past} {b} {obj} because {b} {reason}."
    context = f"{_cap(time)}, {clause}" if time else clause
    choices = [
        (obj, f"What did {a} {base} {b}?"),
        (f"because {b} {reason}", f"Why did {a} {base} {b} {obj}?"),
        (b, f"Who did {a} {base} {obj} to?"),
        (a, f"Who {past} {b} {obj}?"),
    ]
    if time:
        choices.append((time, f"When did {a} {base} {b} {obj}?"))
    answer, question = rng.choice(choices)
    return {"context": context, "answer": answer, "question": question}


# ---------------------------------------------------------------- question / science (out)

ELEMENTS = [("oxygen", "O", 8), ("carbon", "C", 6), ("helium", "He", 2), ("iron", "Fe", 26), ("gold", "Au", 79),
            ("sodium", "Na", 11), ("nitrogen", "N", 7), ("copper", "Cu", 29), ("silver", "Ag", 47),
            ("neon", "Ne", 10), ("calcium", "Ca", 20), ("hydrogen", "H", 1), ("zinc", "Zn", 30), ("lead", "Pb", 82),
            ("potassium", "K", 19)]
PLANETS = [("Mercury", 1, 0), ("Venus", 2, 0), ("Earth", 3, 1), ("Mars", 4, 2), ("Jupiter", 5, 95),
           ("Saturn", 6, 146), ("Uranus", 7, 28), ("Neptune", 8, 16)]
PROCESSES = [("photosynthesis", "plants turn sunlight, water and carbon dioxide into sugar"),
             ("evaporation", "liquid water turns into water vapour"),
             ("condensation", "water vapour cools and turns back into liquid"),
             ("erosion", "wind and water slowly wear away rock"),
             ("digestion", "the body breaks food down into nutrients"),
             ("respiration", "cells release energy from glucose"),
             ("pollination", "insects carry pollen from one flower to another"),
             ("melting", "a solid turns into a liquid as it warms")]
ORGANS = [("heart", "pumps blood around the body"), ("lungs", "take in oxygen from the air"),
          ("kidneys", "filter waste from the blood"), ("stomach", "breaks down food with acid"),
          ("brain", "controls thought and movement"), ("skin", "protects the body from germs"),
          ("liver", "removes toxins from the blood")]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]


def _science(rng: random.Random, label=None) -> dict:
    kind = rng.choices(["element", "planet", "process", "organ"], weights=[4, 2, 2, 2])[0]
    if kind == "element":
        el, sym, n = rng.choice(ELEMENTS)
        context = rng.choice([
            f"{_cap(el)} is a chemical element with the symbol {sym} and atomic number {n}.",
            f"The element {el}, whose symbol is {sym}, has {n} protons in the nucleus of each atom.",
        ])
        answer, question = rng.choice([
            (sym, f"What is the chemical symbol of {el}?"),
            (str(n), f"What is the atomic number of {el}?"),
            (el, f"Which element has the symbol {sym}?"),
        ])
    elif kind == "planet":
        p, i, moons = rng.choice(PLANETS)
        moon_s = "no known moons" if moons == 0 else f"{moons} known moon" + ("s" if moons > 1 else "")
        context = f"{p} is the {ORDINALS[i - 1]} planet from the Sun and has {moon_s}."
        choices = [(p, f"Which planet is the {ORDINALS[i - 1]} from the Sun?"),
                   (f"the {ORDINALS[i - 1]}", f"What is the position of {p} counted from the Sun?")]
        if moons:
            choices.append((str(moons), f"How many known moons does {p} have?"))
        answer, question = rng.choice(choices)
    elif kind == "process":
        proc, desc = rng.choice(PROCESSES)
        context = rng.choice([f"During {proc}, {desc}.", f"{_cap(proc)} is the process in which {desc}."])
        answer, question = rng.choice([
            (proc, f"Which process describes how {desc}?"),
            (desc, f"What happens during {proc}?"),
        ])
    else:
        organ, desc = rng.choice(ORGANS)
        plural = organ.endswith("s")
        context = f"The {organ} {'are the organs' if plural else 'is the organ'} that {desc}."
        answer, question = rng.choice([
            (f"the {organ}", f"Which {'organs' if plural else 'organ'} {desc}?"),
            (desc, f"What {'do' if plural else 'does'} the {organ} do?"),
        ])
    return {"context": context, "answer": answer, "question": question}


# ---------------------------------------------------------------- sentiment / products (in)

PRODUCTS = ["blender", "vacuum cleaner", "phone case", "laptop bag", "kettle", "desk lamp", "pair of headphones",
            "toaster", "backpack", "electric toothbrush", "keyboard", "coffee grinder", "hair dryer",
            "water bottle", "printer", "webcam"]
PRODUCT_CUES = {
    "positive": ["works perfectly", "is sturdy and reliable", "exceeded my expectations", "was worth every penny",
                 "is excellent value", "has held up beautifully", "is the best purchase I have made this year",
                 "arrived quickly and works great"],
    "negative": ["stopped working after a week", "feels cheap and flimsy", "was a complete waste of money",
                 "broke the first time I used it", "is noisy and unreliable", "arrived damaged and useless",
                 "is the worst purchase I have made this year", "fell apart within days"],
}
PRODUCT_CODAS = {"positive": ["so I would definitely recommend it", "and I already ordered a second one"],
                 "negative": ["so I am returning it", "and support never replied to my complaint"]}
WHEN = ["last month", "two weeks ago", "in January", "for my new flat", "on sale", "after reading the reviews"]
GIVERS = ["sister", "brother", "partner", "roommate", "grandmother", "colleague"]


def _products(rng: random.Random, label: str) -> dict:
    p, cue, coda = rng.choice(PRODUCTS), rng.choice(PRODUCT_CUES[label]), rng.choice(PRODUCT_CODAS[label])
    text = rng.choice([
        f"I bought this {p} {rng.choice(WHEN)} and it {cue}.",
        f"The {p} {cue}, {coda}.",
        f"After using the {p} for {rng.choice(['a week', 'a month', 'three months', 'a year'])}, I can say it {cue}.",
        f"My {rng.choice(GIVERS)} gave me this {p} as a gift and it {cue}.",
        f"The packaging was {rng.choice(['plain', 'nice', 'bulky'])}, but the {p} {cue}.",
        f"{'Five stars' if label == 'positive' else 'One star'}: this {p} {cue}.",
    ])
    return {"text": text, "label": label}


# ---------------------------------------------------------------- sentiment / restaurants (out)

DISHES = ["pasta", "soup", "steak", "curry", "pizza", "salad", "fish tacos", "dumplings", "burger", "risotto",
          "pancakes", "noodles", "lamb stew", "sushi"]
VENUES = ["bistro", "diner", "cafe", "pizzeria", "noodle bar", "steakhouse", "trattoria", "tapas bar"]
FOOD_CUES = {"positive": ["was delicious", "was perfectly seasoned", "tasted fresh and flavorful",
                          "came out hot and beautifully cooked"],
             "negative": ["was bland", "was cold and greasy", "tasted stale", "was overcooked and dry"]}
SERVICE_CUES = {"positive": ["the waiter was friendly", "the staff were attentive", "the service was quick"],
                "negative": ["the waiter was rude", "we waited an hour for a table", "the staff ignored us"]}
MEALS = ["lunch", "dinner", "brunch", "a birthday meal", "a date night"]


def _restaurants(rng: random.Random, label: str) -> dict:
    dish, venue = rng.choice(DISHES), rng.choice(VENUES)
    food, service = rng.choice(FOOD_CUES[label]), rng.choice(SERVICE_CUES[label])
    back = "will happily go back" if label == "positive" else "will never go back"
    text = rng.choice([
        f"The {dish} at this {venue} {food}, and {service}.",
        f"We went to the {venue} for {rng.choice(MEALS)} and the {dish} {food}.",
        f"{_cap(service)}, and the {dish} {food}.",
        f"We {back} to this {venue}; the {dish} {food}.",
        f"Ordered the {dish} at the new {venue} downtown: it {food}.",
    ])
    return {"text": text, "label": label}


# ---------------------------------------------------------------- paraphrase / people (in)

RELATIONS = [("hired", "was hired by", "recruited"), ("coached", "was coached by", "trained"),
             ("interviewed", "was interviewed by", "questioned"), ("replaced", "was replaced by", "took over from"),
             ("taught", "was taught by", "tutored"), ("defeated", "was defeated by", "beat"),
             ("mentored", "was mentored by", "guided"), ("visited", "was visited by", "called on"),
             ("thanked", "was thanked by", "expressed gratitude to"),
             ("photographed", "was photographed by", "took a picture of"),
             ("praised", "was praised by", "complimented")]
PEOPLE_CITIES = ["Boston", "Lisbon", "Oslo", "Vienna", "Madrid", "Toronto", "Melbourne", "Prague", "Chicago",
                 "Seoul"]
PEOPLE_VENUES = ["the town hall", "the annual conference", "the museum", "the tennis club", "the university",
                 "the film festival"]
MONTHS = ["January", "March", "May", "July", "September", "November"]


def _people_place(rng):
    return f"in {rng.choice(PEOPLE_CITIES)}" if rng.random() < 0.5 else f"at {rng.choice(PEOPLE_VENUES)}"


def _people_time(rng):
    return f"in {rng.randint(1988, 2022)}" if rng.random() < 0.5 else f"last {rng.choice(MONTHS)}"


def _other(rng, draw, old):
    """A fresh draw that differs from old (a changed key fact)."""
    new = draw(rng)
    while new == old:
        new = draw(rng)
    return new


def _people_render(stmt, style):
    agent, patient, (act, pas, syn), place, time = stmt
    voice, front = style
    if voice == "active":
        core = f"{agent} {act} {patient}"
    elif voice == "passive":
        core = f"{patient} {pas} {agent}"
    else:
        core = f"{agent} {syn} {patient}"
    return f"{_cap(time)}, {core} {place}." if front else f"{core} {place} {time}."


def _people(rng: random.Random, label: str) -> dict:
    a, b = _two(rng, NAMES)
    stmt = (a, b, rng.choice(RELATIONS), _people_place(rng), _people_time(rng))
    styles = [(v, f) for v in ("active", "passive", "synonym") for f in (False, True)]
    s1_style = rng.choice(styles)
    s1 = _people_render(stmt, s1_style)
    if label == "yes":
        s2 = _people_render(stmt, rng.choice([s for s in styles if s[0] != s1_style[0]]))
    else:
        how = rng.choice(["swap", "swap", "place", "time"])
        agent, patient, rel, place, time = stmt
        if how == "swap":
            other = (patient, agent, rel, place, time)
        elif how == "place":
            other = (agent, patient, rel, _other(rng, _people_place, place), time)
        else:
            other = (agent, patient, rel, place, _other(rng, _people_time, time))
        s2 = _people_render(other, rng.choice(styles))
    return {"sentence1": s1, "sentence2": s2, "label": label}


# ---------------------------------------------------------------- paraphrase / questions (out)

INTENTS = {
    "how": ["How do I {vp}?", "How can I {vp}?", "What is the best way to {vp}?", "What is the easiest way to {vp}?",
            "What steps should I follow to {vp}?"],
    "cost": ["How much does it cost to {vp}?", "What is the price to {vp}?", "How expensive is it to {vp}?"],
    "time": ["How long does it take to {vp}?", "How much time do I need to {vp}?"],
    "where": ["Where can I {vp}?", "What is a good place to {vp}?"],
}
ACTIVITIES = [("renew my passport", ["online", "by mail", "abroad"]), ("learn Spanish", ["quickly", "at home", "for free"]),
              ("fix a leaking tap", ["without a plumber", "in the kitchen"]),
              ("start a vegetable garden", ["on a balcony", "in winter"]),
              ("train a puppy", ["to sit", "to stop barking"]), ("open a bank account", ["online", "abroad"]),
              ("prepare for a job interview", ["in a week", "over the phone"]),
              ("clean a laptop keyboard", ["safely", "without removing the keys"]),
              ("install Python", ["on Windows", "on a Mac"]),
              ("get a driving licence", ["at eighteen", "in another country"]),
              ("book cheap flights", ["to Japan", "at the last minute"]),
              ("write a cover letter", ["for an internship", "with no experience"]),
              ("back up my phone", ["to a computer", "without Wi-Fi"]),
              ("make sourdough bread", ["at home", "without a starter"])]


def _questions(rng: random.Random, label: str) -> dict:
    intent = rng.choice(list(INTENTS))
    act, mods = rng.choice(ACTIVITIES)
    mod = rng.choice(mods)
    t1, t2 = rng.sample(INTENTS[intent], 2)
    s1 = t1.format(vp=f"{act} {mod}")
    if label == "yes":
        s2 = t2.format(vp=f"{act} {mod}")
    else:
        how = rng.choice(["modifier", "intent", "activity"])
        if how == "modifier":
            s2 = t2.format(vp=f"{act} {rng.choice([m for m in mods if m != mod])}")
        elif how == "intent":
            s2 = rng.choice(INTENTS[rng.choice([i for i in INTENTS if i != intent])]).format(vp=f"{act} {mod}")
        else:
            act2, mods2 = rng.choice([x for x in ACTIVITIES if x[0] != act])
            s2 = t2.format(vp=f"{act2} {rng.choice(mods2)}")
    return {"sentence1": s1, "sentence2": s2, "label": label}


# ---------------------------------------------------------------- nli / work (in)

JOBS = [("nurse", "hospital"), ("teacher", "primary school"), ("chef", "restaurant"), ("accountant", "bank"),
        ("mechanic", "garage"), ("librarian", "public library"), ("pharmacist", "pharmacy"), ("baker", "bakery"),
        ("engineer", "factory"), ("lawyer", "law firm"), ("cashier", "supermarket"), ("architect", "design studio")]
WORK_CITIES = ["Denver", "Leeds", "Lyon", "Osaka", "Dublin", "Austin", "Hamburg", "Porto", "Perth", "Ottawa"]


def _an(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _work(rng: random.Random, label: str) -> dict:
    n = rng.choice(NAMES)
    job, place = rng.choice(JOBS)
    city, city2 = _two(rng, WORK_CITIES)
    years = rng.randint(2, 25)
    premise = rng.choice([
        f"{n} works as {_an(job)} at {_an(place)} in {city} and has been there for {years} years.",
        f"For the past {years} years, {n} has worked as {_an(job)} at {_an(place)} in {city}.",
        f"{n}, {_an(job)} from {city}, has spent {years} years at the local {place}.",
    ])
    hyp = rng.choice({
        "entailment": [f"{n} has a job.", f"{n} works in {city}.", f"{n} is {_an(job)}.",
                       f"{n} has worked at the {place} for more than one year.", f"{n} is employed at {_an(place)}."],
        "contradiction": [f"{n} is unemployed.", f"{n} has never worked as {_an(job)}.", f"{n} has never been to {city}.",
                          f"{n} started working at the {place} only last week.", f"{n} has no job at all."],
        "neutral": [f"{n} enjoys the job.", f"{n} is married.", f"{n} plans to retire next year.",
                    f"{n} has two children.", f"{n} drives to work every day.", f"{n} was born in {city2}.",
                    f"{n} earns more than most people in {city}."],
    }[label])
    return {"premise": premise, "hypothesis": hyp, "label": label}


# ---------------------------------------------------------------- nli / nature (out)

ANIMALS = [("deer", "forest", "grass"), ("otters", "river", "fish"), ("penguins", "ice shelf", "krill"),
           ("camels", "desert", "dry shrubs"), ("wolves", "mountains", "rabbits"), ("flamingos", "salt lake", "shrimp"),
           ("bears", "woods", "berries"), ("zebras", "savanna", "grass"), ("seals", "rocky coast", "fish"),
           ("beavers", "wetlands", "tree bark"), ("puffins", "sea cliffs", "sand eels"), ("bison", "prairie", "grass")]
SEASONS = ["spring", "summer", "autumn", "winter"]


def _nature(rng: random.Random, label: str) -> dict:
    animals, habitat, food = rng.choice(ANIMALS)
    season = rng.choice(SEASONS)
    premise = rng.choice([
        f"A group of {animals} lives in the {habitat}, where they feed mostly on {food}.",
        f"In {season}, {animals} gather in the {habitat} to feed on {food}.",
        f"Rangers often spot {animals} eating {food} in the {habitat} during {season}.",
    ])
    A = _cap(animals)
    hyp = rng.choice({
        "entailment": [f"{A} can be found in the {habitat}.", f"{A} eat {food}.",
                       f"There are {animals} in the {habitat}.", f"Some animals live in the {habitat}."],
        "contradiction": [f"{A} never eat {food}.", f"No {animals} live in the {habitat}.",
                          f"There are no {animals} in the {habitat}.", f"The {habitat} has no animals at all."],
        "neutral": [f"{A} are an endangered species.", f"The {habitat} is popular with tourists.",
                    f"{A} sleep during the day.", f"The {animals} will migrate next year.",
                    f"The {habitat} is larger than it used to be."],
    }[label])
    return {"premise": premise, "hypothesis": hyp, "label": label}


GENERATORS: dict[str, Callable[..., dict]] = {
    "builtin_sports": _sports, "builtin_weather": _weather,
    "builtin_social": _social, "builtin_science": _science,
    "builtin_products": _products, "builtin_restaurants": _restaurants,
    "builtin_people": _people, "builtin_questions": _questions,
    "builtin_work": _work, "builtin_nature": _nature,
}


# ---------------------------------------------------------------- assembling splits


def _quotas(n: int, labels: tuple, offset: int) -> dict:
    """n items over the labels as evenly as possible; the remainder goes to labels in a rotating order."""
    base, extra = divmod(n, len(labels))
    q = {lab: base for lab in labels}
    for i in range(extra):
        q[labels[(offset + i) % len(labels)]] += 1
    return q


def _deal(rng: random.Random, pools: dict, quotas: dict) -> list:
    items = []
    for lab, k in quotas.items():
        items += [pools[lab].pop() for _ in range(k)]
    rng.shuffle(items)
    return items


def build_splits(info, seed: int) -> dict[str, list[dict]]:
    """All splits of one builtin data set, in memory (deterministic for a given seed)."""
    spec = get_task(info.task)
    make = GENERATORS[info.name]
    rng = random.Random(seed)
    labels = spec.labels if spec.is_classification else (None,)
    # (split name, size) in dealing order; train chunks are concatenated into the nested train sets.
    plan = [("demos_head", len(labels)), ("demos_tail", DEMO_POOL - len(labels)), ("test", TEST_SIZE)]
    if info.trains:
        prev = 0
        for i, size in enumerate(TRAIN_SIZES):
            plan.append((f"chunk{i}", size - prev))
            prev = size
    quotas = [(name, _quotas(n, labels, i)) for i, (name, n) in enumerate(plan)]
    need = {lab: sum(q[lab] for _, q in quotas) for lab in labels}
    pools = {lab: [] for lab in labels}
    seen: set = set()
    for lab in labels:
        tries = 0
        while len(pools[lab]) < need[lab]:
            tries += 1
            if tries > 100 * need[lab]:
                raise RuntimeError(f"{info.name}: the templates cannot make {need[lab]} distinct items")
            item = make(rng, lab)
            key = tuple(item[f] for f in spec.inputs)
            if key in seen:
                continue
            seen.add(key)
            pools[lab].append(item)
        pools[lab].reverse()  # pop() then deals items in generation order
    dealt = {name: _deal(rng, pools, q) for name, q in quotas}
    splits = {"test": dealt["test"], "demos": dealt["demos_head"] + dealt["demos_tail"]}
    if info.trains:
        train: list[dict] = []
        for i, size in enumerate(TRAIN_SIZES):
            train += dealt[f"chunk{i}"]
            splits[f"train_{size}"] = list(train)
    return splits


def generate(root=None, log=print) -> dict:
    """Write all builtin data sets into DATA_DIR (or root).  Returns {task/dataset: meta}."""
    infos = [BUILTIN_DATASETS[name] for name in GENERATORS]
    # Build everything first, so that a generator error leaves nothing half-written.
    plans = [(info, build_splits(info, SEEDS[info.name])) for info in infos]
    results = {}
    for info, splits in plans:
        meta = {
            "source": "builtin",
            "domain": info.domain,
            "description": info.description,
            "generator_version": GENERATOR_VERSION,
            "seed": SEEDS[info.name],
        }
        results[f"{info.task}/{info.name}"] = written = _data.write_dataset(info.task, info.name, splits, root, meta)
        counts = ", ".join(f"{k} {v['count']}" for k, v in written["files"].items())
        log(f"{info.task}/{info.name}: {counts}")
    return results
