"""The paraphrase task's builtin items: statements about people (in-domain) and how-to questions
(out-of-domain)."""
from __future__ import annotations

import random

from .words import NAMES, cap, two

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
    return f"{cap(time)}, {core} {place}." if front else f"{core} {place} {time}."


def people(rng: random.Random, label: str) -> dict:
    a, b = two(rng, NAMES)
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


def questions(rng: random.Random, label: str) -> dict:
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
