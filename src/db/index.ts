export { openStores, driverFor } from "./open-stores.ts";
export type { DbConfig, OpenedStores } from "./open-stores.ts";
