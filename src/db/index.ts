export { openStores, driverFor } from "./open-stores.ts";
export type { DbConfig } from "./open-stores.ts";
