"""The study's 10 languages as data (names, scripts, FLORES codes, resource groups), and the
check of language codes, which accepts any language a data source has."""
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


LANGUAGES: dict[str, Language] = {lang.code: lang for lang in (
  Language("en", "English", "Latin", "eng_Latn", "eng_Latn", "reference"),
  # FLORES+ renamed Simplified Chinese from the macrolanguage code to Mandarin.
  Language("zh", "Chinese (Simplified)", "Han", "zho_Hans", "cmn_Hans", "high"),
  Language("ru", "Russian", "Cyrillic", "rus_Cyrl", "rus_Cyrl", "high"),
  Language("es", "Spanish", "Latin", "spa_Latn", "spa_Latn", "high"),
  Language("it", "Italian", "Latin", "ita_Latn", "ita_Latn", "high"),
  Language("id", "Indonesian", "Latin", "ind_Latn", "ind_Latn", "low"),
  Language("ca", "Catalan", "Latin", "cat_Latn", "cat_Latn", "low"),
  Language("mr", "Marathi", "Devanagari", "mar_Deva", "mar_Deva", "low"),
  Language("ml", "Malayalam", "Malayalam", "mal_Mlym", "mal_Mlym", "low"),
  Language("hi", "Hindi", "Devanagari", "hin_Deva", "hin_Deva", "low"),
)}

REFERENCE = "en"
STUDY_LANGUAGES: tuple[str, ...] = tuple(LANGUAGES)
HIGH_RESOURCE: tuple[str, ...] = tuple(c for c, lang in LANGUAGES.items() if lang.group == "high")
LOW_RESOURCE: tuple[str, ...] = tuple(c for c, lang in LANGUAGES.items() if lang.group == "low")


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
