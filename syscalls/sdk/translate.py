"""Translation through a chat model: one fixed instruction, greedy decoding, the translation
alone back.

The instruction (a system message and a user message, rendered by the model's own chat
template) is

    system: You are a translator. Reply with the translation only, nothing else.
    user:   Translate this text from SOURCE into TARGET:

            TEXT

with the languages' English names (or "the language it is in" for an unnamed source). A
text of one paragraph stops at the reply's first blank line (small models go on to explain).
Languages are ISO 639-1 codes; an unknown code is an error that names it.
"""
from __future__ import annotations

from llmos.syscalls.sdk.errors import SyscallError

SYSTEM = "You are a translator. Reply with the translation only, nothing else."
QUOTES = {'"': '"', "'": "'", "«": "»", "“": "”"}
MAX_TEXT = 20_000  # characters: a translation is one spawn, and its prompt must fit the context

# ISO 639-1: every two-letter code, with its English name.
LANGUAGES = dict(pair.split("=") for pair in (
    "aa=Afar ab=Abkhazian ae=Avestan af=Afrikaans ak=Akan am=Amharic an=Aragonese ar=Arabic as=Assamese "
    "av=Avaric ay=Aymara az=Azerbaijani ba=Bashkir be=Belarusian bg=Bulgarian bi=Bislama bm=Bambara "
    "bn=Bengali bo=Tibetan br=Breton bs=Bosnian ca=Catalan ce=Chechen ch=Chamorro co=Corsican cr=Cree "
    "cs=Czech cu=Church_Slavic cv=Chuvash cy=Welsh da=Danish de=German dv=Divehi dz=Dzongkha ee=Ewe "
    "el=Greek en=English eo=Esperanto es=Spanish et=Estonian eu=Basque fa=Persian ff=Fulah fi=Finnish "
    "fj=Fijian fo=Faroese fr=French fy=Western_Frisian ga=Irish gd=Scottish_Gaelic gl=Galician gn=Guarani "
    "gu=Gujarati gv=Manx ha=Hausa he=Hebrew hi=Hindi ho=Hiri_Motu hr=Croatian ht=Haitian_Creole "
    "hu=Hungarian hy=Armenian hz=Herero ia=Interlingua id=Indonesian ie=Interlingue ig=Igbo ii=Sichuan_Yi "
    "ik=Inupiaq io=Ido is=Icelandic it=Italian iu=Inuktitut ja=Japanese jv=Javanese ka=Georgian ki=Kikuyu "
    "kj=Kuanyama kk=Kazakh kl=Kalaallisut km=Khmer kn=Kannada ko=Korean kr=Kanuri ks=Kashmiri kg=Kongo "
    "ku=Kurdish kv=Komi kw=Cornish ky=Kyrgyz la=Latin lb=Luxembourgish lg=Ganda li=Limburgish ln=Lingala "
    "lo=Lao lt=Lithuanian lu=Luba-Katanga lv=Latvian mg=Malagasy mh=Marshallese mi=Maori mk=Macedonian "
    "ml=Malayalam mn=Mongolian mr=Marathi ms=Malay mt=Maltese my=Burmese na=Nauru nb=Norwegian_Bokmål "
    "nd=North_Ndebele ne=Nepali ng=Ndonga nl=Dutch nn=Norwegian_Nynorsk no=Norwegian nr=South_Ndebele "
    "nv=Navajo ny=Chichewa oc=Occitan oj=Ojibwa om=Oromo or=Oriya os=Ossetian pa=Punjabi pi=Pali pl=Polish "
    "ps=Pashto pt=Portuguese qu=Quechua rm=Romansh rn=Rundi ro=Romanian ru=Russian rw=Kinyarwanda "
    "sa=Sanskrit sc=Sardinian sd=Sindhi se=Northern_Sami sg=Sango si=Sinhala sk=Slovak sl=Slovenian "
    "sm=Samoan sn=Shona so=Somali sq=Albanian sr=Serbian ss=Swati st=Southern_Sotho su=Sundanese sv=Swedish "
    "sw=Swahili ta=Tamil te=Telugu tg=Tajik th=Thai ti=Tigrinya tk=Turkmen tl=Tagalog tn=Tswana to=Tongan "
    "tr=Turkish ts=Tsonga tt=Tatar tw=Twi ty=Tahitian ug=Uyghur uk=Ukrainian ur=Urdu uz=Uzbek ve=Venda "
    "vi=Vietnamese vo=Volapük wa=Walloon wo=Wolof xh=Xhosa yi=Yiddish yo=Yoruba za=Zhuang zh=Chinese zu=Zulu"
).split())
LANGUAGES = {code: name.replace("_", " ") for code, name in LANGUAGES.items()}


def language(code: str, what: str = "target_language") -> str:
    """The English name of an ISO 639-1 code; SyscallError (invalid_argument) naming it if unknown."""
    name = LANGUAGES.get(code.strip().lower()) if isinstance(code, str) else None
    if name is None:
        raise SyscallError("invalid_argument", f"{what} {code!r} is not an ISO 639-1 language code "
                                               "(two letters, such as 'fr', 'de' or 'ja')")
    return name


def messages(text: str, target_language: str, source_language: str | None = None) -> list[dict]:
    """The chat that asks for the translation of `text`."""
    if not isinstance(text, str) or not text.strip():
        raise SyscallError("invalid_argument", "text to translate is empty")
    if len(text) > MAX_TEXT:
        raise SyscallError("invalid_argument", f"text to translate is {len(text)} characters, over the limit of {MAX_TEXT}")
    target = language(target_language)
    source = language(source_language, "source_language") if source_language else "the language it is in"
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Translate this text from {source} into {target}:\n\n{text}"}]


def stops(text: str) -> list[str]:
    """Where the reply ends: small models go on to explain their translation after a blank
    line, so a text of one paragraph stops at the first blank line of its reply."""
    return [] if "\n\n" in text.strip() else ["\n\n"]


def answer(output: str) -> str:
    """The translation alone: the reply without surrounding whitespace or quotes the model added."""
    out = output.strip()
    if len(out) >= 2 and QUOTES.get(out[0]) == out[-1] and out[-1] not in out[1:-1]:
        out = out[1:-1].strip()
    return out
