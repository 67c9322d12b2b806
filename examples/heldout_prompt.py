def f(x: int) -> int:
    """Given an integer, square it, then floor-divide by 4. Return the result.

    >>> f(100)
    2500
    >>> f(82)
    1681
    """
