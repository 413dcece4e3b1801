"""The summary task's builtin items: match reports (sports, in-domain) and weather bulletins (out-of-domain)."""
from __future__ import annotations

import random

from .words import DAYS, two

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


def sports(rng: random.Random, label=None) -> dict:
    w, l = two(rng, TEAMS)
    city, day = rng.choice(STADIUM_CITIES), rng.choice(DAYS)
    ws = rng.randint(1, 5)
    ls = rng.randint(0, ws - 1)
    p1, p2 = two(rng, PLAYERS)
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


def weather(rng: random.Random, label=None) -> dict:
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
