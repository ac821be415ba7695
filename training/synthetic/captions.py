"""Synthetic Instagram captions for a ground-truth garment, with realistic noise.

Two template banks exist: ``split="dev"`` (what the text miner is developed on) and ``split="heldout"``
(different sentence templates, chatter, languages, typo model and hashtag style), so an evaluation on
held-out captions measures noise the miner was not tuned on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from serving.ontology import Ontology

#: Bump when the generated text changes for the same seed (benchmark caches key on it).
CAPTIONS_VERSION = "2"
NOISE_KINDS = ("typo", "language", "chatter", "hashtags_only", "emoji_only", "brand_only")
SPLITS = ("dev", "heldout")


@dataclass(frozen=True)
class Caption:
    """A post's text fields; ``mentioned`` says whether the true category is named (in any form)."""

    caption: str
    hashtags: tuple[str, ...]
    comments: tuple[str, ...]
    user_tags: tuple[str, ...]
    mentioned: bool
    noise: str | None = None


_TEMPLATES = {
    "dev": (
        "Loving my new {item} {emo}",
        "Today's look: {item} {emo} #ootd",
        "Finally got this {item}!! {emo}",
        "{item} season is here {emo}",
        "Wearing my favourite {item} today",
        "New in: {item} {emo}",
        "Can't stop wearing this {item}",
    ),
    "heldout": (
        "obsessed w/ this {item} rn {emo}",
        "Throwing it back to that {item} moment",
        "{emo} {item} kind of day {emo}",
        "a {item} that goes with everything. thoughts?",
        "Picked up the {item} at the market this morning",
        "Outfit details ↓ {item} | linked in bio",
        "Never leaving the house without my {item} again",
        "she said the {item} was too much. i said no such thing",
    ),
}
_CHATTER = {
    "dev": (
        "Sunday brunch with the best people", "Coffee first ☕", "Golden hour never disappoints",
        "Monday motivation", "Weekend vibes", "Missing summer already", "Good times with good friends",
    ),
    "heldout": (
        "train delayed again, third time this week", "my cat refuses to leave the sofa 🐈",
        "tried the new ramen place downtown 🍜", "exam season is killing me",
        "sunrise run along the river", "who else is watching the finale tonight?",
        "grateful for slow mornings", "road trip playlist suggestions please",
    ),
}
_COMMENTS = {
    "dev": ("Love this! 😍", "So pretty", "Gorgeous!!", "Where is it from?", "🔥🔥🔥"),
    "heldout": ("need this in my life", "stunning as always ✨", "omg yes", "link pls?", "👏👏", "queen"),
}
_GENERIC_TAGS = {
    "dev": ("#ootd", "#fashion", "#style", "#instafashion", "#love"),
    "heldout": ("#whatiwore", "#lookoftheday", "#fashionblogger", "#instadaily", "#wiw", "#potd"),
}
_FRIENDS = ("@anna.b", "@mike_92", "@the_real_sam", "@lisa.lou")
_HAPPY_EMOJI = ("✨", "💕", "😍", "🙌", "💯", "🔥", "😊")
_ITEM_EMOJI = {  # category → emojis that show it (the generator's own table, independent of the miner's)
    "dresses": ("👗",), "shoes": ("👠", "👟", "👢", "👡"), "bags": ("👜", "👛", "🎒"),
    "jeans": ("👖",), "all_accessories": ("🧣", "🧤", "👒", "🧢", "💍", "⌚", "🕶️"),
    "tops_and_tshirts": ("👕",), "blouses_and_tunics": ("👚", "👔"), "coats": ("🧥",),
    "tights_and_socks": ("🧦",), "trouser_and_shorts": ("🩳",),
}
# Other-language templates and words: dev uses es/fr, held-out de/it/pt/nl.
_FOREIGN = {
    "dev": (
        ("Mi nuevo {item} favorito {emo}", {"dresses": "vestido", "skirts": "falda", "shoes": "zapatos", "bags": "bolso"}),
        ("Ma nouvelle tenue avec {item} {emo}", {"dresses": "robe", "skirts": "jupe", "coats": "manteau", "bags": "sac"}),
    ),
    "heldout": (
        ("Mein neues Lieblingsstück: {item} {emo}", {"dresses": "Kleid", "shoes": "Schuhe", "bags": "Tasche", "coats": "Mantel"}),
        ("Il mio nuovo {item} preferito {emo}", {"dresses": "vestito", "shoes": "scarpe", "bags": "borsa", "jackets": "giacca"}),
        ("Olha só meu {item} novo {emo}", {"dresses": "vestido", "shoes": "sapatos", "bags": "bolsa", "trouser_and_shorts": "calça"}),
        ("Eindelijk mijn nieuwe {item} {emo}", {"dresses": "jurk", "trouser_and_shorts": "broek", "bags": "tas", "shoes": "schoenen"}),
    ),
}
# Slang and synonyms the ontology's keyword lists do not hold: the miner can only catch them by similarity.
_SLANG = {
    "dresses": ("slip", "wrap number", "sundress fit", "midi number"),
    "tops_and_tshirts": ("crop", "baby tee fit", "muscle shirt", "graphic number"),
    "trouser_and_shorts": ("trackies", "culottes", "cargos", "bottoms"),
    "jumpers_and_cardigans": ("knitwear", "turtleneck", "roll neck", "woolly"),
    "coats": ("outerwear", "duffle", "peacoat", "topper"),
    "shoes": ("footwear", "mules", "clogs", "stompers"),
    "blouses_and_tunics": ("button-up", "smock", "peasant number"),
    "bags": ("carryall", "satchel", "arm candy", "holdall"),
}
_ATTRIBUTE_SLANG = {
    "striped": ("breton",), "floral": ("ditsy",), "checked": ("windowpane",), "polka_dot": ("spotty",),
    "animal_print": ("leo",), "camouflage": ("army print",), "plain": ("basic",), "cotton": ("organic",),
    "wool": ("woolly",), "silk": ("silky",), "leather": ("buttery",), "satin": ("slinky",),
    "denim": ("double-d",), "fleece": ("fluffy",), "cashmere": ("cosy knit",),
}
# Other garments named next to the true one ("with my black boots" under a dress).
_DISTRACTORS = ("with my {colour} {item}", "paired with a {colour} {item}", "+ my fave {item}", "and the {item} from last week")
_COLOUR_WORDS = ("black", "white", "red", "navy", "beige", "grey")
_KEYBOARD = {c: n for c, n in zip("qwertyuiopasdfghjklzxcvbnm", "wertyuioqpsdfghjkalxcvbnmz")}


def _terms(ontology: Ontology, category: str, subcategory: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    cat = ontology.categories[ontology.category_index(category)]
    if subcategory is None:  # a photo labelled with its category only: the text names the category
        return cat.keywords, cat.keywords
    sub = next((s for s in cat.subcategories if s.name == subcategory), None)
    if sub is None:
        raise ValueError(f"{subcategory!r} is not a sub-category of {category!r}")
    return cat.keywords, sub.keywords


def _attribute_word(ontology: Ontology, name: str, rng: random.Random) -> str:
    for term in (*ontology.materials, *ontology.patterns):
        if term.name == name:
            return rng.choice(term.keywords)
    raise ValueError(f"unknown material/pattern {name!r}")


def _typo(word: str, rng: random.Random, split: str) -> str:
    """Dev typos swap two letters; held-out typos drop, double or hit a neighbouring key."""
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 1)
    if split == "dev":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1 :]
    if kind == 1:
        return word[:i] + word[i] + word[i:]
    return word[:i] + _KEYBOARD.get(word[i], word[i]) + word[i + 1 :]


def _hashtag(words: str, split: str) -> str:
    parts = words.split()
    if split == "dev":
        return "#" + "".join(parts)
    return "#" + "".join(p.capitalize() for p in parts)


def _wrong_category(ontology: Ontology, category: str, rng: random.Random) -> str:
    others = [c for c in ontology.categories if c.name != category]
    return rng.choice(rng.choice(others).keywords)


def make_caption(
    rng: random.Random,
    ontology: Ontology,
    *,
    category: str,
    subcategory: str | None,
    materials: Sequence[str] = (),
    patterns: Sequence[str] = (),
    style: str | None = None,
    brand: str | None = None,
    mention_prob: float = 0.8,
    noise: float = 0.3,
    split: str = "dev",
    distractor_prob: float = 0.0,
    slang_prob: float = 0.0,
) -> Caption:
    """A caption (plus hashtags, comments, user tags) for one ground-truth garment.

    Args:
        rng: the only source of randomness, so captions are reproducible.
        subcategory: ``None`` when only the category is known (the text then names the category).
        mention_prob: probability that the text names the category (directly, by sub-category, emoji
            or a translation); otherwise it says nothing fashion-related or names a wrong category.
        noise: probability of one noise kind from :data:`NOISE_KINDS` being applied.
        split: ``"dev"`` or ``"heldout"`` template bank.
        distractor_prob: probability of also naming another category's garment (not the true one).
        slang_prob: probability of naming the garment, and each attribute, by slang (where known).

    Raises:
        ValueError: unknown split, category, sub-category, material or pattern.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cat_words, sub_words = _terms(ontology, category, subcategory)
    attrs = _attribute_words(rng, ontology, (*patterns, *materials), slang_prob)
    kind = rng.choice(NOISE_KINDS) if rng.random() < noise else None
    emo = rng.choice(_HAPPY_EMOJI)
    comments, tags, handles = _extras(rng, split, brand)

    distractor = ""
    if distractor_prob > 0 and rng.random() < distractor_prob:
        distractor = " " + rng.choice(_DISTRACTORS).format(colour=rng.choice(_COLOUR_WORDS),
                                                          item=_wrong_category(ontology, category, rng))

    if rng.random() >= mention_prob:
        text = _unrelated_text(rng, ontology, category, split, emo)
        return Caption(text + distractor, tuple(tags), comments, tuple(handles), mentioned=False, noise=kind)

    item = rng.choice(sub_words if rng.random() < 0.6 else cat_words)
    if slang_prob > 0 and category in _SLANG and rng.random() < slang_prob:
        item = rng.choice(_SLANG[category])
    phrase = " ".join([*attrs, item])
    text = rng.choice(_TEMPLATES[split]).format(item=phrase, emo=emo)
    text, tags, comments, mentioned = _apply_noise(kind, rng, ontology, _Said(text, phrase, item, attrs, emo),
                                                   category=category, brand=brand, split=split, tags=tags,
                                                   comments=comments)
    if style and mentioned and rng.random() < 0.5:
        tags.append(_hashtag(f"{style.replace('_', ' ')} style", split))
    rng.shuffle(tags)
    return Caption((text + distractor).strip(), tuple(tags), comments, tuple(handles), mentioned=mentioned, noise=kind)


@dataclass(frozen=True)
class _Said:
    """What a caption that names the garment says, before a noise kind rewrites it."""

    text: str
    phrase: str
    item: str
    attrs: list[str]
    emo: str


def _apply_noise(kind: str | None, rng: random.Random, ontology: Ontology, said: _Said, *, category: str,
                 brand: str | None, split: str, tags: list[str],
                 comments: tuple[str, ...]) -> tuple[str, list[str], tuple[str, ...], bool]:
    """The caption text, tags, comments and whether the garment is still named, after noise ``kind``."""
    text, emo, mentioned = said.text, said.emo, True
    if kind == "typo":
        text = rng.choice(_TEMPLATES[split]).format(item=" ".join(_typo(w, rng, split) for w in said.phrase.split()),
                                                    emo=emo)
    elif kind == "language":
        template, words = rng.choice(_FOREIGN[split])
        foreign = words.get(category)
        text = template.format(item=" ".join([*said.attrs, foreign or said.item]), emo=emo)
    elif kind == "chatter":
        text = f"{rng.choice(_CHATTER[split])}. {text} {rng.choice(_CHATTER[split])}"
        comments += tuple(rng.sample(_CHATTER[split], k=2))
    elif kind == "hashtags_only":
        text = rng.choice(("", emo, "."))
        tags = [_hashtag(said.item, split), *(_hashtag(a, split) for a in said.attrs), *tags]
    elif kind == "emoji_only":
        item_emoji = _ITEM_EMOJI.get(category)
        mentioned = item_emoji is not None
        text = " ".join(rng.choice(item_emoji or _HAPPY_EMOJI) for _ in range(rng.randint(1, 3))) + " " + emo
    elif kind == "brand_only":
        mentioned = False
        text = f"{emo} @{(brand or rng.choice(ontology.brands).name).replace('_', '')}"
    return text, tags, comments, mentioned


def _attribute_words(rng: random.Random, ontology: Ontology, names: tuple[str, ...], slang_prob: float) -> list[str]:
    """The words a caption may use for the garment's attributes (about 70% of them are used)."""
    words = [_attribute_word(ontology, a, rng) for a in names]  # validates every name
    if slang_prob > 0:  # drawn only when asked, so captions without slang keep their random stream
        words = [rng.choice(_ATTRIBUTE_SLANG[n]) if n in _ATTRIBUTE_SLANG and rng.random() < slang_prob else w
                 for n, w in zip(names, words, strict=True)]
    return [w for w in words if rng.random() < 0.7]


def _extras(rng: random.Random, split: str, brand: str | None) -> tuple[tuple[str, ...], list[str], list[str]]:
    """Comments, generic hashtags and user tags around the caption."""
    comments = tuple(rng.sample(_COMMENTS[split], k=rng.randint(0, 2)))
    tags = list(rng.sample(_GENERIC_TAGS[split], k=rng.randint(0, 3)))
    handles = [rng.choice(_FRIENDS)] if rng.random() < 0.3 else []
    if brand:
        handles.append("@" + brand.replace("_", ""))
    return comments, tags, handles


def _unrelated_text(rng: random.Random, ontology: Ontology, category: str, split: str, emo: str) -> str:
    """Silent or misleading text: chatter, or another category named (the photo shows more than one thing)."""
    text = rng.choice(_CHATTER[split])
    if rng.random() < 0.5:
        text = rng.choice(_TEMPLATES[split]).format(item=_wrong_category(ontology, category, rng), emo=emo)
    return text
