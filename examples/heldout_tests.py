assert f(100) == 2500
assert f(82) == 1681
assert f(-7) == 12
assert f(0) == 0
assert f(3) == 2
