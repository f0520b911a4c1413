"""The kernel's network state the director changes: addresses (VIPs), links, sysctls."""
