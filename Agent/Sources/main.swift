print("fleetkeep-agent: not built yet")
