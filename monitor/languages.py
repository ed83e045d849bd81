"""Language codes between monitor's detectors and Argos Translate; pure.

monitor's codes are ISO 639-1 as :func:`monitor.language.normalize_code` gives them (``nb``,
``zh``, ``zh-tw``); Argos names its packages with its own codes, which are mostly the same
but not always: Traditional Chinese is ``zt``, Brazilian Portuguese ``pb``. Argos has no
Nynorsk model, and its Bokmål one reads Nynorsk well enough, so ``nn`` maps to ``nb``.
"""

from __future__ import annotations

PIVOT = "en"

ARGOS_LANGUAGES: dict[str, str] = {
    "ar": "Arabic", "az": "Azerbaijani", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan",
    "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "eo": "Esperanto", "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian",
    "fi": "Finnish", "fr": "French", "ga": "Irish", "gl": "Galician", "he": "Hebrew",
    "hi": "Hindi", "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese",
    "ko": "Korean", "ky": "Kyrgyz", "lt": "Lithuanian", "lv": "Latvian", "ms": "Malay",
    "nb": "Norwegian Bokmål", "nl": "Dutch", "pb": "Portuguese (Brazil)", "pl": "Polish",
    "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sl": "Slovenian",
    "sq": "Albanian", "sr": "Serbian", "sv": "Swedish", "th": "Thai", "tl": "Tagalog",
    "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "vi": "Vietnamese", "zh": "Chinese",
    "zt": "Chinese (Traditional)",
}

# Detector or metadata code -> Argos code, where they differ.
TO_ARGOS: dict[str, str] = {
    "no": "nb", "nn": "nb", "nob": "nb",
    "zh-cn": "zh", "zh-sg": "zh", "zh-hans": "zh",
    "zh-tw": "zt", "zh-hk": "zt", "zh-mo": "zt", "zh-hant": "zt",
    "pt-br": "pt", "pt-pt": "pt",
    "iw": "he", "in": "id", "fil": "tl",
}
# Argos code -> monitor's code, where they differ.
FROM_ARGOS: dict[str, str] = {"zt": "zh-tw", "pb": "pt"}
_TRADITIONAL = {"tw", "hk", "mo", "hant"}


def to_argos(code: str) -> str:
    """The Argos code for a detector or metadata code: ``no`` -> ``nb``, ``zh-tw`` -> ``zt``."""
    tag = code.strip().lower().replace("_", "-")
    if tag in TO_ARGOS:
        return TO_ARGOS[tag]
    if tag in ARGOS_LANGUAGES:
        return tag
    base, *subtags = tag.split("-")
    if base == "zh" and _TRADITIONAL.intersection(subtags):
        return "zt"
    return TO_ARGOS.get(base, base)


def from_argos(code: str) -> str:
    """monitor's code for an Argos code: ``zt`` -> ``zh-tw``."""
    return FROM_ARGOS.get(code, code)
