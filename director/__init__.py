"""director: a high-availability load-balancer director (VRRP + IPVS + health checks)."""

__version__ = "0.1.0"
