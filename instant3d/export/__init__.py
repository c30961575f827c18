"""Files a user keeps: the textured mesh (GLB / OBJ / PLY) and the orbit video."""
