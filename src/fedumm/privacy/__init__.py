"""Differential privacy and secure aggregation, as pure numeric and protocol code:

* ``dp``: clipping, Gaussian noise and adaptive clipping for client-level DP-FedAvg;
* ``accountant``: epsilon of the subsampled Gaussian mechanism (dp-accounting);
* ``dpsgd``: record-level DP-SGD inside a client (Opacus);
* ``secagg``: secure aggregation (Bonawitz et al. 2017) over bytes messages.

The round loop wires them in ``fedumm.federation.privacy``; the libraries are the ``privacy``
extra (``pip install 'fedumm[privacy]'``)."""
