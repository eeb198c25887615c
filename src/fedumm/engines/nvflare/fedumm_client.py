"""Entry script of fedumm's FLARE client app (shipped as custom/fedumm_client.py in the job).

FLARE runs it inside the client job process, or as an external trainer process launched with
``engine.python`` / ``engine.client_command``; the logic is in ``fedumm.engines.nvflare.client``,
so a site needs fedumm (and nvflare) installed in the interpreter that runs it.
"""

from fedumm.engines.nvflare.client import main

if __name__ == "__main__":
    main()
