"""The one region table: what a user writes for ``geolocation`` -> the two-letter country codes Vast filters on.
Regions ("EU", "NA") are expanded here, once, because Vast matches country codes only.
"""

from __future__ import annotations

from functools import lru_cache

from skyward_ray.errors import ConfigError

# ISO 3166-1 alpha-2 (tzdata's iso3166.tab), so a typo such as "UK" or "XX" is an error instead of an empty search.
_ISO_3166_ALPHA2 = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY
    BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK
    FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR
    IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK
    ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF
    TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
"""
COUNTRY_CODES: frozenset[str] = frozenset(_ISO_3166_ALPHA2.split())


def _codes(text: str) -> frozenset[str]:
    codes = frozenset(text.split())
    unknown = codes - COUNTRY_CODES
    if unknown:  # a typo in the table below must fail at import, not silently match nothing
        raise ValueError(f"region table names unknown country codes: {sorted(unknown)}")
    return codes


_EU27 = _codes("AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE")
_EUROPE = _EU27 | _codes("AD AL BA BY CH FO GB GG GI IM IS JE LI MC MD ME MK NO RS RU SM UA VA AX SJ")
_NORTH_AMERICA = _codes("US CA MX")
_LATIN_AMERICA = _codes(
    "MX GT BZ SV HN NI CR PA CU DO HT JM PR BS BB TT AG DM GD KN LC VC AR BO BR CL CO EC GY PE PY SR UY VE"
)
_SOUTH_AMERICA = _codes("AR BO BR CL CO EC GY PE PY SR UY VE")
_ASIA = _codes(
    "AE AF AM AZ BD BH BN BT CN GE HK ID IL IN IQ IR JO JP KG KH KP KR KW KZ LA LB LK MM MN MO MV MY NP OM PH PK PS "
    "QA SA SG SY TH TJ TL TM TR TW UZ VN YE"
)
_OCEANIA = _codes("AU NZ FJ PG SB VU NC PF WS TO KI FM MH PW NR TV GU MP")
_APAC = _codes("AU NZ CN HK MO TW JP KR MN IN BD LK NP PK SG MY TH VN ID PH KH LA MM BN TL")
_MIDDLE_EAST = _codes("AE BH CY EG IL IQ IR JO KW LB OM PS QA SA SY TR YE")
_AFRICA = _codes(
    "DZ AO BJ BW BF BI CM CV CF TD KM CD CG CI DJ EG GQ ER SZ ET GA GM GH GN GW KE LS LR LY MG MW ML MR MU MA MZ NA "
    "NE NG RW ST SN SC SL SO ZA SS SD TZ TG TN UG ZM ZW"
)

# Region name -> country codes. Keys are normalised (upper case, single spaces). "NA" is North America (not
# Namibia); "EU" is Europe, not only the European Union ("EU27").
REGIONS: dict[str, frozenset[str]] = {
    "EU": _EUROPE,
    "EUROPE": _EUROPE,
    "EU27": _EU27,
    "NA": _NORTH_AMERICA,
    "NORTH AMERICA": _NORTH_AMERICA,
    "LATAM": _LATIN_AMERICA,
    "LATIN AMERICA": _LATIN_AMERICA,
    "SOUTH AMERICA": _SOUTH_AMERICA,
    "AMERICAS": _NORTH_AMERICA | _LATIN_AMERICA,
    "ASIA": _ASIA,
    "APAC": _APAC,
    "ASIA PACIFIC": _APAC,
    "OCEANIA": _OCEANIA,
    "MIDDLE EAST": _MIDDLE_EAST,
    "AFRICA": _AFRICA,
    "EMEA": _EUROPE | _MIDDLE_EAST | _AFRICA,
}


def _normalise(token: str) -> str:
    return " ".join(token.replace("_", " ").replace("-", " ").upper().split())


def allowed_geolocations() -> str:
    """The allowed values, as error messages list them."""
    return "a two-letter country code (e.g. US, DE, JP) or a region: " + ", ".join(REGIONS)


@lru_cache(maxsize=256)
def resolve_region(value: str) -> frozenset[str]:
    """Country codes for a region, a country code, or a comma-separated mix of them; unknown -> ConfigError."""
    tokens = [_normalise(token) for token in value.split(",")]
    if not value.strip() or any(not token for token in tokens):
        raise ConfigError(f"geolocation: {value!r} is empty; allowed: {allowed_geolocations()}")
    codes: set[str] = set()
    for token in tokens:
        if token in REGIONS:
            codes |= REGIONS[token]
        elif token in COUNTRY_CODES:
            codes.add(token)
        else:
            raise ConfigError(
                f"geolocation: {token!r} is not a known region or country code; allowed: {allowed_geolocations()}"
            )
    return frozenset(codes)


def normalise_geolocation(value: str) -> str:
    """The canonical spelling of a valid value ("us, eu" -> "US,EU"); raises ConfigError like resolve_region."""
    resolve_region(value)
    return ",".join(_normalise(token) for token in value.split(","))
