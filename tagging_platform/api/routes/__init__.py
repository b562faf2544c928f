"""The API's routes, one APIRouter per area; api/app.py includes them."""
