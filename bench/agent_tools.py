"""The tools of bench/agents.py: OpenAI function tools with JSON-schema parameters, and the
Python that really runs them (deterministic, no network)."""
from __future__ import annotations

import datetime as dt
import zlib

CITIES = ["Lima", "Oslo", "Tokyo", "Nairobi", "Lisbon", "Denver", "Hanoi", "Perth"]
OFFSETS = {"Lima": -5, "Oslo": 1, "Tokyo": 9, "Nairobi": 3, "Lisbon": 0, "Denver": -7, "Hanoi": 7, "Perth": 8}
RATES = {"EUR": 1.0, "USD": 1.08, "GBP": 0.86, "JPY": 162.0, "NOK": 11.6, "PEN": 4.05}

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Today's weather forecast for a city",
        "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                       "properties": {"city": {"type": "string", "minLength": 2, "maxLength": 24,
                                               "pattern": "^[A-Z][a-z]+( [A-Z][a-z]+)*$"},
                                      "unit": {"enum": ["celsius", "fahrenheit"]}}}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "The local time in a city",
        "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                       "properties": {"city": {"type": "string", "minLength": 2, "maxLength": 24}}}}},
    {"type": "function", "function": {
        "name": "convert_currency", "description": "Convert an amount of money between currencies",
        "parameters": {"type": "object", "additionalProperties": False, "required": ["amount", "from", "to"],
                       "properties": {"amount": {"type": "number", "minimum": 0, "maximum": 1000000},
                                      "from": {"enum": sorted(RATES)}, "to": {"enum": sorted(RATES)}}}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def run_tool(name: str, args: dict) -> dict:
    """Execute one call; its result is what the tool message carries back."""
    if name == "get_weather":
        seed = zlib.crc32(args["city"].encode())
        c = seed % 35 - 5
        temp = c if args["unit"] == "celsius" else round(c * 9 / 5 + 32)
        return {"city": args["city"], "temperature": temp, "unit": args["unit"],
                "sky": ["clear", "cloudy", "rain", "snow"][seed % 4]}
    if name == "get_time":
        hours = OFFSETS.get(args["city"], 0)
        now = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc) + dt.timedelta(hours=hours)
        return {"city": args["city"], "time": now.strftime("%H:%M"), "utc_offset": hours}
    if name == "convert_currency":
        value = args["amount"] / RATES[args["from"]] * RATES[args["to"]]
        return {"amount": round(value, 2), "currency": args["to"]}
    raise KeyError(f"no tool named {name!r}")
