"""Map builders: live map, trajectory, stations; Leaflet served locally."""
