import { Type } from "@mikro-orm/core";
import type { EntityProperty, Platform } from "@mikro-orm/core";

/**
 * A `Date` stored as integer milliseconds since the epoch (`bigint` column).
 *
 * The same representation on SQLite and PostgreSQL keeps one code path for
 * raw queries, round-trips milliseconds exactly and sorts like the instant.
 */
export class EpochMillisType extends Type<Date | null, number | null> {
  override convertToDatabaseValue(value: Date | null): number | null {
    return value == null ? null : value.getTime();
  }

  override convertToJSValue(value: number | string | Date | null): Date | null {
    if (value == null) return null;
    if (value instanceof Date) return value;
    return new Date(Number(value));
  }

  override get runtimeType(): string {
    return "Date";
  }

  override compareAsType(): string {
    return "number";
  }

  override getColumnType(_prop: EntityProperty, _platform: Platform): string {
    return "bigint";
  }
}
