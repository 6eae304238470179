/*
 * common/version.h - relayd's version, shown by `relayd --version`,
 * `relayctl --version`, `relayctl status` and in the metrics.
 */
#ifndef RELAY_VERSION_H
#define RELAY_VERSION_H

#define RELAY_VERSION "0.11.0"

#endif
