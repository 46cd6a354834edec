"""
The service layer, on top of everything else: the ``twistd txcb`` plugin's
options and service (:mod:`txcb.service.tap`), the services it is made of
(:mod:`txcb.service.listen`: the bucket's and one per endpoint), Prometheus metrics
(:mod:`txcb.service.metrics`) and txcb's reactor (:mod:`txcb.service.reactor`).
Nothing below this layer imports it.
"""
