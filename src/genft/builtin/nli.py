"""The nli task's builtin items: people at work (in-domain) and animals in nature (out-of-domain)."""
from __future__ import annotations

import random

from .words import NAMES, cap, two

# ---------------------------------------------------------------- nli / work (in)

JOBS = [("nurse", "hospital"), ("teacher", "primary school"), ("chef", "restaurant"), ("accountant", "bank"),
        ("mechanic", "garage"), ("librarian", "public library"), ("pharmacist", "pharmacy"), ("baker", "bakery"),
        ("engineer", "factory"), ("lawyer", "law firm"), ("cashier", "supermarket"), ("architect", "design studio")]
WORK_CITIES = ["Denver", "Leeds", "Lyon", "Osaka", "Dublin", "Austin", "Hamburg", "Porto", "Perth", "Ottawa"]


def _an(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def work(rng: random.Random, label: str) -> dict:
    n = rng.choice(NAMES)
    job, place = rng.choice(JOBS)
    city, city2 = two(rng, WORK_CITIES)
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


def nature(rng: random.Random, label: str) -> dict:
    animals, habitat, food = rng.choice(ANIMALS)
    season = rng.choice(SEASONS)
    premise = rng.choice([
        f"A group of {animals} lives in the {habitat}, where they feed mostly on {food}.",
        f"In {season}, {animals} gather in the {habitat} to feed on {food}.",
        f"Rangers often spot {animals} eating {food} in the {habitat} during {season}.",
    ])
    A = cap(animals)
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
