"""The study's 10 languages as data (names, scripts, branches, areas, FLORES codes, resource
groups), the check of language codes, which accepts any language a data source has, and the
related / unrelated language an adapter's side effects are measured on."""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
  code: str  # ISO 639-1, also the file name of a text-directory corpus (`{code}.txt`)
  name: str  # English name
  script: str  # Unicode script of the written text
  flores200: str  # FLORES-200 / SIB-200 / NLLB code
  flores_plus: str  # config name in FLORES+ (openlanguagedata/flores_plus)
  group: str  # "reference" (en), "high" or "low" resource
  branch: str  # genealogical branch (Glottolog's level that groups close relatives)
  area: str  # where it is mostly spoken


LANGUAGES: dict[str, Language] = {lang.code: lang for lang in (
  Language("en", "English", "Latin", "eng_Latn", "eng_Latn", "reference", "Germanic", "Europe"),
  # FLORES+ renamed Simplified Chinese from the macrolanguage code to Mandarin.
  Language("zh", "Chinese (Simplified)", "Han", "zho_Hans", "cmn_Hans", "high", "Sinitic",
           "East Asia"),
  Language("ru", "Russian", "Cyrillic", "rus_Cyrl", "rus_Cyrl", "high", "Slavic", "Europe"),
  Language("es", "Spanish", "Latin", "spa_Latn", "spa_Latn", "high", "Romance", "Europe"),
  Language("it", "Italian", "Latin", "ita_Latn", "ita_Latn", "high", "Romance", "Europe"),
  Language("id", "Indonesian", "Latin", "ind_Latn", "ind_Latn", "low", "Malayic",
           "Southeast Asia"),
  Language("ca", "Catalan", "Latin", "cat_Latn", "cat_Latn", "low", "Romance", "Europe"),
  Language("mr", "Marathi", "Devanagari", "mar_Deva", "mar_Deva", "low", "Indo-Aryan",
           "South Asia"),
  Language("ml", "Malayalam", "Malayalam", "mal_Mlym", "mal_Mlym", "low", "Dravidian",
           "South Asia"),
  Language("hi", "Hindi", "Devanagari", "hin_Deva", "hin_Deva", "low", "Indo-Aryan",
           "South Asia"),
)}

REFERENCE = "en"
STUDY_LANGUAGES: tuple[str, ...] = tuple(LANGUAGES)
HIGH_RESOURCE: tuple[str, ...] = tuple(c for c, lang in LANGUAGES.items() if lang.group == "high")
LOW_RESOURCE: tuple[str, ...] = tuple(c for c, lang in LANGUAGES.items() if lang.group == "low")


def comparison_languages(target: str, ref: str = REFERENCE) -> tuple[str | None, str | None]:
  """(related, unrelated) study languages for an adapter on `target`: related is the first
  other study language of the same branch, else of the same script, else of the same area;
  unrelated is the first high-resource one sharing none of the three. None where the study has
  no such language, or for a target outside its table."""
  if target not in LANGUAGES:
    return None, None
  t = LANGUAGES[target]
  others = [LANGUAGES[c] for c in STUDY_LANGUAGES if c not in (target, ref)]
  related = next((o.code for key in ("branch", "script", "area") for o in others
                  if getattr(o, key) == getattr(t, key)), None)
  unrelated = next((o.code for o in others if o.group == "high" and all(
      getattr(o, key) != getattr(t, key) for key in ("branch", "script", "area"))), None)
  return related, unrelated


# ISO 639-1/639-3, optionally with a script or region: en, fr, tlh, zh-Hans, pt_BR.
_CODE = re.compile(r"^[a-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")


def validate_languages(codes: Iterable[str] | str) -> tuple[str, ...]:
  """The codes as a tuple, in the order given; a comma-separated string (as a CLI flag gives it) is split.

  Any language code is accepted, not only the study's 10 (`LANGUAGES`): a corpus directory with
  `fr.txt` serves `fr`; whether a source has a language is the source's to say. Raises
  ValueError on a string that is no language code, an empty list, or a repeated code (a repeat
  would count one language's sentences twice).
  """
  if isinstance(codes, str):
    codes = [c.strip() for c in codes.split(",") if c.strip()]
  codes = tuple(codes)
  if not codes:
    raise ValueError(f"no languages given; the study's codes: {', '.join(STUDY_LANGUAGES)}")
  bad = [c for c in codes if not isinstance(c, str) or not _CODE.match(c)]
  if bad:
    raise ValueError(f"{', '.join(map(repr, bad))}: not a language code (ISO 639, e.g. en, fr, "
                     f"zh-Hans); the study's codes: {', '.join(STUDY_LANGUAGES)}")
  repeated = sorted({c for c in codes if codes.count(c) > 1})
  if repeated:
    raise ValueError(f"language code(s) given more than once: {', '.join(repeated)}")
  return codes
