"""The question task's builtin items: everyday social scenes (in-domain) and science facts (out-of-domain)."""
from __future__ import annotations

import random

from .words import NAMES, cap, two

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


def social(rng: random.Random, label=None) -> dict:
    a, b = two(rng, NAMES)
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
    context = f"{cap(time)}, {clause}" if time else clause
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


def science(rng: random.Random, label=None) -> dict:
    kind = rng.choices(["element", "planet", "process", "organ"], weights=[4, 2, 2, 2])[0]
    if kind == "element":
        el, sym, n = rng.choice(ELEMENTS)
        context = rng.choice([
            f"{cap(el)} is a chemical element with the symbol {sym} and atomic number {n}.",
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
        context = rng.choice([f"During {proc}, {desc}.", f"{cap(proc)} is the process in which {desc}."])
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
