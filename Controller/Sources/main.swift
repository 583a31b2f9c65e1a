print("fleetkeep-controller: not built yet")
