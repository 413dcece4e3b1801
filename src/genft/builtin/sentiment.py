"""The sentiment task's builtin items: product reviews (in-domain) and restaurant reviews (out-of-domain)."""
from __future__ import annotations

import random

from .words import cap

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


def products(rng: random.Random, label: str) -> dict:
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


def restaurants(rng: random.Random, label: str) -> dict:
    dish, venue = rng.choice(DISHES), rng.choice(VENUES)
    food, service = rng.choice(FOOD_CUES[label]), rng.choice(SERVICE_CUES[label])
    back = "will happily go back" if label == "positive" else "will never go back"
    text = rng.choice([
        f"The {dish} at this {venue} {food}, and {service}.",
        f"We went to the {venue} for {rng.choice(MEALS)} and the {dish} {food}.",
        f"{cap(service)}, and the {dish} {food}.",
        f"We {back} to this {venue}; the {dish} {food}.",
        f"Ordered the {dish} at the new {venue} downtown: it {food}.",
    ])
    return {"text": text, "label": label}
