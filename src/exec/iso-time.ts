/**
 * ISO 8601 instants as callers write them: a date (`2026-01-01`, midnight
 * UTC), or a date and time to the minute, second or fraction of a second,
 * with `Z`, an offset (`+02:00`, `+0200`, `+02`) or none (UTC). `T`, `t` or
 * one space separates date and time. In a URL query an unencoded `+` arrives
 * as a space: a space before the offset digits is read as `+`.
 */

const PATTERN =
  /^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?(?:([Zz])|([+\- ])(\d{2})(?::?(\d{2}))?)?)?$/;

/** The instant `text` names, or null when it is not such an ISO 8601 date or date-time. */
export function parseIsoInstant(text: string): Date | null {
  const m = PATTERN.exec(text.trim());
  if (m === null) return null;
  const [, y, mo, d, h, mi, s, frac, , sign, oh, om] = m;
  const year = Number(y);
  const month = Number(mo);
  const day = Number(d);
  const hour = h === undefined ? 0 : Number(h);
  const minute = mi === undefined ? 0 : Number(mi);
  const second = s === undefined ? 0 : Number(s);
  if (month < 1 || month > 12 || day < 1 || day > daysIn(year, month)) return null;
  if (hour > 23 || minute > 59 || second > 60) return null;
  const ms = frac === undefined ? 0 : Math.floor(Number(`0.${frac}`) * 1000);
  let offsetMin = 0;
  if (sign !== undefined && oh !== undefined) {
    const hours = Number(oh);
    const minutes = om === undefined ? 0 : Number(om);
    if (hours > 23 || minutes > 59) return null;
    offsetMin = (sign === "-" ? -1 : 1) * (hours * 60 + minutes);
  }
  // Not Date.UTC: it reads years 0–99 as 1900–1999. A leap second (:60) is the next minute's first instant.
  const date = new Date(0);
  date.setUTCFullYear(year, month - 1, day);
  date.setUTCHours(hour, minute - offsetMin, second, ms);
  return Number.isNaN(date.getTime()) ? null : date;
}

function daysIn(year: number, month: number): number {
  return new Date(Date.UTC(year, month, 0)).getUTCDate();
}
